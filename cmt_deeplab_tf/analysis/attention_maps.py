"""The supplement's recipe for showing clustering results and attention maps.

CMT-DeepLab supplement §3, "Visualization Details": values are averaged over the
heads (as DETR does) into one map, which is turned into a heatmap "in a manner
similar to CAM by normalizing the values to the range [0, 255]", with NO
smoothing (no square root or other re-mapping of the learned values).

Here, per map:
  1. `average_over_heads`: mean over the head axis (the models already return
     head-averaged CLUSTERING_MAPS / ATTENTION_MAPS; this is for per-head maps).
  2. `upsample_to_image`: BILINEAR upsampling of the layer's grid to the image,
     corner-aligned as the model's own mask logits are upsampled (grid point
     (i, j) of a stride-s layer sits on pixel (s*i, s*j) of the padded crop; the
     padding at the bottom/right is cut off). Bilinear interpolation only
     inserts convex combinations of neighbouring values: it does not change the
     values at the grid points, nor their order.
  3. `min_max_heatmap`: a linear map of the values on the image to [0, 255],
     the minimum to exactly 0 and the maximum to exactly 255. Normalising after
     step 2 makes the visible part of the map span the whole range even when
     the padding held the extreme value.
  4. `colorize_heatmap`: a jet colour map (blue = 0 ... red = 255), written out
     by hand, on the heatmap rounded to integers.
  5. `colors.overlay`: alpha blending with the image.
`attention_overlays` runs the five steps for a stack of maps.
"""
from typing import List, Sequence, Tuple

import numpy as np

from cmt_deeplab_tf.ops import colors
from cmt_deeplab_tf.ops import post_processing

HEATMAP_MAX = 255.0


def average_over_heads(per_head_maps: np.ndarray, head_axis: int = 0) -> np.ndarray:
  """Averages per-head maps over `head_axis` (DETR), e.g. [heads, h, w] -> [h, w]."""
  return np.mean(np.asarray(per_head_maps, np.float32), axis=head_axis)


def layer_stride(map_size: Tuple[int, int], padded_size: Tuple[int, int]) -> float:
  """The stride s of a layer grid [h, w] over a padded crop [H', W'] = s*(h-1)+1.

  Raises:
    ValueError: if height and width disagree on the stride (not a grid of the crop).
  """
  strides = [(padded - 1) / (cells - 1) if cells > 1 else 1.0
             for cells, padded in zip(map_size, padded_size)]
  if map_size[0] > 1 and map_size[1] > 1 and strides[0] != strides[1]:
    raise ValueError(f'A map of size {tuple(map_size)} is not a strided grid of the '
                     f'crop {tuple(padded_size)}: strides {strides} differ.')
  return strides[0] if map_size[0] > 1 else strides[1]


def upsample_to_image(maps: np.ndarray, stride: float,
                      image_size: Tuple[int, int]) -> np.ndarray:
  """Bilinear, corner-aligned upsampling of float [h, w, K] maps to [H, W, K].

  Grid point (i, j) lands on pixel (stride*i, stride*j); pixels past the last
  grid point repeat the edge value (`post_processing.upsample_mask_logits`).
  """
  upsampled = post_processing.upsample_mask_logits(
      np.asarray(maps, np.float32)[np.newaxis], tuple(image_size), stride)
  return upsampled.numpy()[0]


def min_max_heatmap(maps: np.ndarray) -> np.ndarray:
  """Linearly maps each map of float [H, W] or [H, W, K] onto [0, 255].

  The minimum over the spatial axes becomes exactly 0 and the maximum exactly
  255; a constant map becomes all 0. No other re-mapping (no square root).

  Returns:
    float32 of the input's shape.
  """
  maps = np.asarray(maps, np.float64)
  low = maps.min(axis=(0, 1), keepdims=True)
  span = maps.max(axis=(0, 1), keepdims=True) - low
  scaled = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
  return (scaled * HEATMAP_MAX).astype(np.float32)


def _jet_colormap() -> np.ndarray:
  """uint8 [256, 3]: the classic jet, blue -> cyan -> yellow -> red."""
  position = np.linspace(0.0, 1.0, 256)
  channels = [np.clip(1.5 - np.abs(4.0 * position - center), 0.0, 1.0)
              for center in (3.0, 2.0, 1.0)]  # Red, green, blue.
  return np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


JET_COLORMAP = _jet_colormap()


def colorize_heatmap(heatmap: np.ndarray) -> np.ndarray:
  """float [H, W] in [0, 255] -> uint8 RGB [H, W, 3] (jet, rounded to integers)."""
  levels = np.clip(np.rint(heatmap), 0, HEATMAP_MAX).astype(np.int64)
  return JET_COLORMAP[levels]


def attention_overlays(image: np.ndarray, maps: np.ndarray,
                       padded_size: Sequence[int],
                       alpha: float = 0.5) -> List[np.ndarray]:
  """The recipe for K head-averaged maps of one layer over one image.

  Args:
    image: uint8 [H, W, 3], the image the model saw before padding.
    maps: float [h, w, K] clustering or attention maps of one layer, one per
      cluster center, on the layer's grid of the padded crop.
    padded_size: (H', W'), the crop the model ran on (H' >= H, W' >= W).
    alpha: the heatmap's weight in the blend.

  Returns:
    K uint8 [H, W, 3] images.
  """
  stride = layer_stride(maps.shape[:2], padded_size)
  heatmaps = min_max_heatmap(upsample_to_image(maps, stride, image.shape[:2]))
  return [colors.overlay(image, colorize_heatmap(heatmaps[..., k]), alpha)
          for k in range(heatmaps.shape[-1])]
