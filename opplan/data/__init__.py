"""The data layer: datasets on disk, frame shards, clip sampling, transforms, loaders.

- ``manifest``: the normalised dataset folder (``manifest.csv`` + ``classes.txt``).
- ``synth``: the seeded demo dataset (real H.264 mp4 files).
- ``annotations``: importers for UCF101, HMDB51, Kinetics, Something-Something V2, CSV.
- ``prepare`` / ``shards`` / ``splits``: decode once into memory-mapped frame shards,
  internal train/val split (docs/design.md §5).
- ``sampling`` / ``transforms`` / ``dataset``: clips for training, validation and testing.

Nothing is imported here so that ``import opplan.data.sampling`` stays light.
"""
