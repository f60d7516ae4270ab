"""The dataset concern: from a Pix3D-format folder to labelled, cached training tensors.

  annotations  reading `pix3d.json` into validated `Annotation` records
  pose         pose angles of an annotation and the bin schemes that turn them into labels
  splits       train/validation splits (a registry: seed, random, by_model)
  dataset      `ModalityView`, the channel-selecting view of a cache that trials read
"""
