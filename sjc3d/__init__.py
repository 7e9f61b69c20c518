"""sjc3d: one photo of an object in, a coloured 3D mesh out.

Zero-1-to-3 + Score Jacobian Chaining over a hash-grid NeRF.  This module must stay
import-light: `sjc3d --help` and `sjc3d --version` import it without importing torch.
"""

__version__ = "0.1.0"
