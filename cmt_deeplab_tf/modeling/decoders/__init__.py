"""Pixel and transformer decoders of the mask-transformer models."""
