"""Configuration: presets, overrides and one-line errors naming the key."""

import subprocess
import sys

import pytest

from sjc3d.config import CONFIGS_DIR, Config, config_from_dict, config_to_dict, load_config
from sjc3d.errors import ConfigError

PRESETS = sorted(CONFIGS_DIR.glob("*.yaml"))


def test_defaults_follow_the_reference_run_except_where_measured():
    cfg = Config()
    assert cfg.train.steps == 10000 and cfg.train.optimizer == "adamax"
    assert (cfg.train.lr_grid, cfg.train.lr) == (0.03, 0.003)  # measured (README)
    reference = load_config(["reference"], [])
    assert (reference.train.lr, reference.train.lr_grid) == (0.05, 0.0)  # the reference's one rate
    # Regulariser forms: sjc3d's by default (measured, README), the reference's in its preset; same weights.
    assert (cfg.loss.near_view_mode, cfg.loss.depth_smooth_mode) == ("input", "squared")
    assert (reference.loss.near_view_mode, reference.loss.depth_smooth_mode) == ("reference", "reference")
    assert cfg.loss.near_view == reference.loss.near_view == cfg.loss.depth_smooth == reference.loss.depth_smooth == 1e4
    assert cfg.prior.guidance_scale == 100.0
    assert cfg.camera.resolution == 0 and cfg.camera.radius == 2.0 and cfg.camera.fov_deg == pytest.approx(49.1)
    assert (cfg.sjc.t_min, cfg.sjc.t_max) == (10, 969)


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} → {"train.lr": 1}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _same(written, resolved) -> bool:
    """A preset's YAML value against the typed config's (1e4 is a string to YAML, lists become tuples)."""
    if isinstance(written, (list, tuple)) and isinstance(resolved, (list, tuple)):
        return len(written) == len(resolved) and all(_same(w, r) for w, r in zip(written, resolved))
    if isinstance(resolved, (int, float)) and not isinstance(resolved, bool) and not isinstance(written, bool):
        try:
            return float(written) == float(resolved)
        except (TypeError, ValueError):
            return False
    if isinstance(written, str) and isinstance(resolved, str) and written != resolved:
        return resolved.endswith(written.lstrip("./"))  # a shipped path resolved from the project root
    return written == resolved


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_every_key_it_sets_takes_effect(preset):
    import yaml

    written = _leaves(yaml.safe_load(preset.read_text()) or {})
    assert written, f"{preset.name} sets nothing"
    resolved = _leaves(config_to_dict(load_config([preset])))
    for key, value in written.items():  # (the reference preset pins the defaults: nothing to compare those to)
        assert key in resolved, f"{preset.name}: {key} is not a config key"
        assert _same(value, resolved[key]), f"{preset.name}: {key}={value!r} resolved to {resolved[key]!r}"


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"reference", "preview", "cpu-tiny", "stable-zero123"} <= names


def test_overrides_are_typed_and_applied_in_order(tmp_path):
    preset = tmp_path / "a.yaml"
    preset.write_text("train:\n  lr: 0.2\n  steps: 7\n")
    later = tmp_path / "b.yaml"
    later.write_text("train:\n  steps: 9\n")
    cfg = load_config([preset, later], ["train.lr=1e-3", "camera.elevation_range=[0, 30]", "export.threshold=null"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.steps == 9
    assert cfg.camera.elevation_range == (0.0, 30.0)
    assert cfg.export.threshold is None


def test_yes_no_choices_survive_yaml_booleans(tmp_path):
    cfg = load_config([], ["prior.stable=yes", "input.remove_background=no"])
    assert cfg.prior.stable == "yes" and cfg.input.remove_background == "no"
    preset = tmp_path / "p.yaml"
    preset.write_text("prior:\n  stable: no\n")
    assert load_config([preset]).prior.stable == "no"
    with pytest.raises(ConfigError, match="field.output=True"):
        load_config([], ["field.output=true"])


def test_preset_by_name():
    assert load_config(["reference"]).train.steps == 10000


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.lr=1", "unknown config key 'trian.lr' (did you mean 'train.lr'?)"),
        ("field.outptu=rgb", "did you mean 'field.output'?"),
        ("field.output=rbg", "field.output='rbg': expected one of 'latent' | 'rgb' (did you mean 'rgb'?)"),
        ("train.steps=abc", "train.steps='abc': expected int"),
        ("train.steps=-1", "train.steps=-1: must be >= 0"),
        ("camera.fov_deg=200", "camera.fov_deg=200.0: must be in (0, 180)"),
        ("sjc.t_min=980", "sjc.t_min=980: need 0 <= t_min < t_max <= 999"),
        ("prior.guidance_min_t=-5", "prior.guidance_min_t=-5: must be in [0, 1000]"),
        ("train", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_a_preset_names_the_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.learning_rate'"):
        load_config([preset])


def test_missing_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="not found.*presets: .*reference"):
        load_config(["no-such-preset"])


def test_round_trip_through_a_dict():
    cfg = load_config(["reference"], ["train.seed=3"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sjc3d.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_config_prints_the_resolved_config():
    result = run_cli("config", "-c", "reference", "train.lr=0.01")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.01" in result.stdout and "guidance_scale: 100.0" in result.stdout


def test_cli_bad_key_is_one_line_and_exit_2():
    result = run_cli("config", "train.lrr=1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown config key 'train.lrr' (did you mean 'train.lr'?)"
    assert "Traceback" not in result.stderr
