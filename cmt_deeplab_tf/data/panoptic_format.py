"""The COCO panoptic on-disk format, shared by COCO, Cityscapes and the synthetic set.

A panoptic annotation is an RGB PNG whose pixel value encodes a segment id as
`id = R + 256 * G + 256**2 * B` (0 = unlabeled / void), plus a JSON file with
`images`, `annotations` (one per image: `file_name` of the PNG, `image_id`,
`segments_info` = [{id, category_id, iscrowd, area, bbox}]) and `categories`
([{id, name, isthing}]). See cocodataset/panopticapi (Kirillov et al., CVPR 2019).

This module reads and writes that format with clear errors; it knows nothing of
TensorFlow.
"""
import io
import json
import os
from typing import Any, Dict, List

import numpy as np
from PIL import Image

VOID_SEGMENT_ID = 0


class PanopticFormatError(ValueError):
  """A panoptic data set on disk does not follow the COCO panoptic format."""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  """Decodes an RGB panoptic PNG [H, W, 3] (uint8) into segment ids [H, W] (int64)."""
  rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
  """Encodes segment ids [H, W] (< 2**24) into an RGB image [H, W, 3] (uint8)."""
  ids = np.asarray(ids, dtype=np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
    raise ValueError(f'Segment ids must lie in [0, 2**24), got [{ids.min()}, {ids.max()}].')
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
  """PNG-encodes a uint8 image [H, W] or [H, W, 3]."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def read_image_file(path: str) -> bytes:
  """Returns the bytes of an image file after checking that it decodes."""
  if not os.path.isfile(path):
    raise PanopticFormatError(f'Image file not found: {path}')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception as e:  # PIL raises many types for corrupt files.
    raise PanopticFormatError(f'Corrupt or unreadable image {path}: {e}') from e
  return data


def read_segment_ids(path: str) -> np.ndarray:
  """Reads a panoptic PNG and returns its segment ids [H, W] (int64)."""
  if not os.path.isfile(path):
    raise PanopticFormatError(f'Panoptic PNG not found: {path}')
  try:
    with Image.open(path) as png:
      rgb = np.asarray(png.convert('RGB'))
  except Exception as e:
    raise PanopticFormatError(f'Corrupt or unreadable panoptic PNG {path}: {e}') from e
  return rgb_to_id(rgb)


def load_panoptic_json(path: str) -> Dict[str, Any]:
  """Loads a panoptic JSON file and checks its top-level fields."""
  if not os.path.isfile(path):
    raise PanopticFormatError(f'Panoptic JSON not found: {path}')
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise PanopticFormatError(f'{path} is not valid JSON: {e}') from e
  for field in ('images', 'annotations', 'categories'):
    if field not in data:
      raise PanopticFormatError(f'{path} has no field {field!r}.')
  return data


def check_segments_match(segment_ids: np.ndarray, segments_info: List[Dict[str, Any]],
                         png_path: str) -> None:
  """Checks that the PNG's non-void ids and the JSON's `segments_info` ids agree."""
  in_png = set(np.unique(segment_ids).tolist()) - {VOID_SEGMENT_ID}
  in_json = [s['id'] for s in segments_info]
  if len(set(in_json)) != len(in_json):
    raise PanopticFormatError(f'{png_path}: duplicate segment ids in segments_info.')
  missing_in_png = sorted(set(in_json) - in_png)
  if missing_in_png:
    raise PanopticFormatError(
        f'{png_path}: segments_info ids {missing_in_png[:5]} do not occur in the PNG.')
  missing_in_json = sorted(in_png - set(in_json))
  if missing_in_json:
    raise PanopticFormatError(
        f'{png_path}: PNG segment ids {missing_in_json[:5]} are absent from segments_info.')


def segment_bbox(mask: np.ndarray) -> List[int]:
  """COCO bbox [x, y, width, height] of a boolean mask [H, W]."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  if rows.size == 0:
    return [0, 0, 0, 0]
  return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
          int(rows[-1] - rows[0] + 1)]
