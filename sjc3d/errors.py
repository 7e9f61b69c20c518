"""Errors that are the user's to fix.

A `UserError` is printed by the CLI as one line (no traceback) and turned into the exit code
it carries.  Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix: a bad path, a bad value, a model that cannot be found."""

    exit_code = 1


class ConfigError(UserError):
    """An unknown configuration key or a value of the wrong type or range."""

    exit_code = 2


class InputError(UserError):
    """An input file that is missing, unreadable or unusable (e.g. a fully transparent image)."""

    exit_code = 2


class ModelNotFoundError(UserError):
    """A prior's weights could not be found locally or fetched from the hub."""

    exit_code = 3


class NonFiniteError(UserError):
    """Training produced NaN or Inf; the last good checkpoint is kept."""

    exit_code = 4
