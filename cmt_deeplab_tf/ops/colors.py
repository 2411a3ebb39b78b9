"""Colours for panoptic maps: one hue family per class, shades per instance."""
import colorsys

import numpy as np

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib

VOID_COLOR = (0, 0, 0)


def class_colors(num_classes: int) -> np.ndarray:
  """Well-separated colours [C, 3] (uint8): golden-ratio hues, alternating value."""
  hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
  return np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95 if i % 2 else 0.7)
                   for i, h in enumerate(hues)]) * 255.0


def colorize_panoptic(panoptic: np.ndarray,
                      info: dataset_info_lib.DatasetInfo) -> np.ndarray:
  """Panoptic ids [H, W] -> RGB [H, W, 3] uint8; instances of a class get shades."""
  semantic = panoptic // info.label_divisor
  instance = panoptic % info.label_divisor
  valid = (semantic >= 0) & (semantic < info.num_classes)
  base = class_colors(info.num_classes)[np.where(valid, semantic, 0)]
  # Deterministic per-instance shade in [0.55, 1.0].
  shade = np.where(instance > 0, 0.55 + 0.45 * ((instance * 0.37) % 1.0), 1.0)
  rgb = base * shade[..., None]
  rgb[~valid] = VOID_COLOR
  return np.clip(rgb, 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """Blends a uint8 image [H, W, 3] with a colour map of the same size."""
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colored.astype(np.float32)
  return np.clip(blended, 0, 255).astype(np.uint8)
