"""The core, pure PyTorch (never ray or mlflow): the data (`pix3d.data`), the renderer of the
built-in set (`pix3d.render`), the models and their registry (`pix3d.models`), one training
run (`pix3d.train`), and what they share (constants and the modality table, geometry, metrics,
devices, errors, atomic file writes, the command-line plumbing). The modules named like
commands (`prepare`, `synthetic`, `inspect`) are entry points holding only their parsers.
"""
