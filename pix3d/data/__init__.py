"""The dataset concern: from a Pix3D-format folder to labelled, cached training tensors.

  annotations  reading `pix3d.json` into validated `Annotation` records
  pose         pose angles of an annotation and the bin schemes that turn them into labels
  images       decoding one image file into a square uint8 crop (crop box, bit depth, colour)
  edges        the Canny-like edge detector that derives boundaries from rgb
  predict      the published normals / boundaries networks (visualpriors) run on a photo's crop
  maps         where boundaries/normals come from (mirrored map folders) and how that is described
  cache        the prepared cache on disk: its key, size, `PreparedData`, `load_prepared`, clean-up
  prepare      `prepare()`: building a cache with worker processes, its meta and manifest
  entry        one entry's channels (crop, mask, maps): a preparation worker's job
  splits       train/validation splits (a registry: published, random, by_model)
  dataset      `ModalityView`, the channel-selecting view of a cache that trials read
  inspect      per-entry labels and label histograms of a folder
  render_check each model rendered at its pose against its mask (IoU), the contact sheet

The commands are `pix3d.prepare` and `pix3d.inspect`; this package holds no command.
"""
