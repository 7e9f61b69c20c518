"""Mesh export: density grid → marching cubes → cleanup → colours → .glb/.obj/.ply.

    grid.py      density on a grid (chunked), the automatic iso level, the density filter,
                 marching cubes
    cleanup.py   floaters, Taubin smoothing, decimation
    color.py     colours at surface points: queried (RGB fields) or projected from decoded
                 views (latent; visibility from sjc3d/mesh_raster.py)
    atlas.py     UV atlas (xatlas, in a child process)
    texture.py   texel rasterisation, baking, gutter fill, textured rendering
    gltf.py      the GLB writer (unlit material, linear COLOR_0, sRGB texture) and a reader
    writers.py   file formats and axes (files are y-up, front +z)
    pipeline.py  the library entry point `export_field`
    command.py   `sjc3d export`
"""

from sjc3d.export.command import export_command
from sjc3d.export.grid import EmptyFieldError, ThresholdChoice, choose_threshold, sample_density_grid
from sjc3d.export.pipeline import ColorViews, ExportResult, export_field, field_geometry, render_colored_mesh
from sjc3d.export.writers import FILE_TO_WORLD, WORLD_TO_FILE, write_mesh

__all__ = [
    "ColorViews",
    "EmptyFieldError",
    "ExportResult",
    "FILE_TO_WORLD",
    "ThresholdChoice",
    "WORLD_TO_FILE",
    "choose_threshold",
    "export_command",
    "export_field",
    "field_geometry",
    "render_colored_mesh",
    "sample_density_grid",
    "write_mesh",
]
