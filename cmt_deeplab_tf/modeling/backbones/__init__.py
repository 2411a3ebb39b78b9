"""Backbones: Axial-ResNet-50/104 and ResNet-50-beta (Axial-DeepLab, ECCV 2020)."""
