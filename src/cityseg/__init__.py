"""cityseg: semantic segmentation of street scenes on Cityscapes."""

__version__ = "0.1.0"
