"""Keras layers and models of the CMT-DeepLab family and the MaX-DeepLab-S baseline."""
