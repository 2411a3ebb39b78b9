"""Align-corners bilinear resizing between the strides of 32k+1 crops.

For a crop of 32k+1 pixels the stride-s grid has (32k / s) + 1 points that
include both image corners, so strides 16, 8, 4 line up exactly under
align-corners resizing (DeepLab2 `resize_bilinear(align_corners=True)`).
"""
import tensorflow as tf


def resize_align_corners(features, height, width):
  """Resizes [B, h, w, C] to [B, height, width, C] (bilinear, align corners).

  The output keeps the input dtype; equal static sizes return the input.
  """
  if features.shape[1] == height and features.shape[2] == width:
    return features
  resized = tf.raw_ops.ResizeBilinear(
      images=features, size=tf.stack([height, width]), align_corners=True)
  return tf.cast(resized, features.dtype)
