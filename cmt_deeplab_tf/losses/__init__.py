"""Hungarian matching and the MaX-DeepLab / CMT-DeepLab training objectives."""
