"""Ray Tune trainables: thin adapters from a Tune config to `pix3d` (pose) and `relpose`.
"""
