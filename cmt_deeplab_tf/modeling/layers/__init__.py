"""Building blocks of the backbones: norms, convolutions, axial attention, blocks."""
