"""The synthetic Pix3D renderer: procedural furniture, drawn and written in Pix3D's layout.

One module per concern, from the objects to the files:

    shapes     Box, the per-category furniture builders, CATEGORIES
    mesh       Mesh, boxes_to_mesh, and OBJ files (write_obj, read_obj)
    raster     rasterize (z-buffer) and edge_map (occlusion and crease edges)
    camera     Camera, sample_camera, camera_pose: the views and their (R, t) labels
    shading    palettes, backgrounds, render_view, the 8-bit encoding of normals
    synthetic  SyntheticConfig, BUILTIN, model pools, plans, the writer generate, stamps,
               ensure_builtin and the contact sheet write_preview

Everything a render worker runs (shapes, mesh, raster, shading, the writer) needs numpy and
PIL only; torch, which takes seconds to import, is loaded lazily where poses are made, in the
parent. The command is `python -m pix3d.synthetic` (pix3d/synthetic.py). Names are imported
from their modules; this package re-exports none.
"""
