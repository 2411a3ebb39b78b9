"""Align-corners bilinear resizing between the strides of 32k+1 crops.

For a crop of 32k+1 pixels the stride-s grid has (32k / s) + 1 points that
include both image corners, so strides 16, 8, 4 line up exactly under
align-corners resizing (DeepLab2 `resize_bilinear(align_corners=True)`).
"""
import tensorflow as tf


def spatial_size(features):
  """(height, width) of [B, H, W, C]: Python ints when static (XLA needs
  compile-time resize sizes), scalar tensors otherwise."""
  dynamic = tf.shape(features)
  height, width = features.shape[1], features.shape[2]
  return (dynamic[1] if height is None else height,
          dynamic[2] if width is None else width)


def resize_align_corners(features, height, width):
  """Resizes [B, h, w, C] to [B, height, width, C] (bilinear, align corners).

  The output keeps the input dtype; equal static sizes return the input.
  """
  if features.shape[1] == height and features.shape[2] == width:
    return features
  resized = tf.raw_ops.ResizeBilinear(
      images=features, size=tf.stack([height, width]), align_corners=True)
  return tf.cast(resized, features.dtype)
