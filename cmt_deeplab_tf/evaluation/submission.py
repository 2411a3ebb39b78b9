"""Panoptic predictions in the COCO and Cityscapes submission formats.

Both formats (COCO panoptic, http://cocodataset.org/#format-results; the
Cityscapes panoptic benchmark, cityscapesscripts' `createPanopticImgs.py` and
`evalPanopticSemanticLabeling.py`) store one PNG per image whose pixel holds
the segment id `R + 256 * G + 256^2 * B` (0 = void), and one JSON file

  {'annotations': [{'image_id', 'file_name',
                    'segments_info': [{'id', 'category_id', 'iscrowd',
                                       'area', 'bbox': [x, y, w, h]}, ...]},
                   ...],
   'categories': [{'id', 'name', 'isthing'}, ...]}

with the PNGs in a folder named like the JSON file without its extension (the
default both official evaluators look for). Category ids are the data set's own
ids (`DatasetInfo.source_ids`: COCO category ids, Cityscapes label ids).
Segment ids: COCO `category_id * label_divisor + instance`; Cityscapes
`label_id * 1000 + instance` for things and `label_id` for stuff, as in its
ground truth. Every stuff class is one segment per image; predictions are
never crowd.

Any class table works (`DatasetInfo.source_ids` are the ids written), so a data
set converted from its own JSON gets its own category ids back. From the command
line: `predict --format=coco|cityscapes`, `train --mode=eval --submission_format=...`.

Usage (streaming; memory holds only the small JSON records):
  writer = CocoPanopticWriter('/tmp/out', dataset_info.get_dataset_info('coco'))
  for image_id, panoptic_pred in predictions:   # int [H, W] in train ids
    writer.add(image_id, panoptic_pred)
  json_path = writer.finalize()
"""
import json
import os
from typing import Dict, List, Tuple, Union

import numpy as np
from PIL import Image

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.evaluation import panoptic_quality

ImageId = Union[int, str, bytes]


def _bounding_boxes(index: np.ndarray, num_segments: int) -> np.ndarray:
  """Boxes [x, y, width, height] of every segment of an index map.

  Args:
    index: int [H, W], the segment index (0..S-1) of every pixel.
    num_segments: S.

  Returns:
    int64 [S, 4]; every segment must be present.
  """
  height, width = index.shape
  rows = np.zeros((num_segments, height), bool)
  cols = np.zeros((num_segments, width), bool)
  rows[index, np.arange(height)[:, None]] = True
  cols[index, np.arange(width)[None, :]] = True
  y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
  y1 = height - rows[:, ::-1].argmax(axis=1)
  x1 = width - cols[:, ::-1].argmax(axis=1)
  return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


class _PanopticWriter:
  """Writes one PNG per `add`, and the JSON file at `finalize`."""

  def __init__(self, output_dir: str, info: dataset_info_lib.DatasetInfo,
               name: str):
    self._info = info
    self._json_path = os.path.join(output_dir, name + '.json')
    self._png_dir = os.path.join(output_dir, name)
    os.makedirs(self._png_dir, exist_ok=True)
    self._annotations: List[Dict[str, object]] = []
    self._image_ids = set()

  def _segment_id(self, category_id: int, instance: int, is_thing: bool) -> int:
    raise NotImplementedError

  def _normalized_image_id(self, image_id: ImageId) -> Tuple[object, str]:
    """Returns the JSON image id and the PNG file name."""
    raise NotImplementedError

  def add(self, image_id: ImageId, panoptic_pred: np.ndarray) -> None:
    """Writes the PNG of one image and keeps its JSON record.

    Args:
      image_id: the image's id in the data set (bytes, as tf.data yields
        strings, are decoded).
      panoptic_pred: integer [H, W] `semantic * label_divisor + instance` in
        train ids, void = ignore label; at the image's original size.

    Raises:
      ValueError: on an unknown class, a map that is not [H, W], or an image
        id given twice.
    """
    json_image_id, file_name = self._normalized_image_id(image_id)
    if json_image_id in self._image_ids:
      raise ValueError(f'image_id {json_image_id!r} was already added.')
    ids, areas, index = panoptic_quality.find_segments(
        panoptic_pred, self._info, 'panoptic_pred')
    boxes = _bounding_boxes(index, ids.size)
    divisor = self._info.label_divisor
    segment_ids = np.zeros(ids.size, np.int64)  # 0 stays for void.
    segments_info = []
    for i, (semantic, instance) in enumerate(zip(ids // divisor, ids % divisor)):
      if semantic == self._info.ignore_label:
        continue
      category_id = self._info.source_ids[semantic]
      segment_ids[i] = self._segment_id(category_id, int(instance),
                                        self._info.is_thing[semantic])
      segments_info.append({
          'id': int(segment_ids[i]), 'category_id': int(category_id),
          'iscrowd': 0, 'area': int(areas[i]),
          'bbox': [int(v) for v in boxes[i]]})
    Image.fromarray(panoptic_format.id_to_rgb(segment_ids[index])).save(
        os.path.join(self._png_dir, file_name))
    self._image_ids.add(json_image_id)
    self._annotations.append({'image_id': json_image_id, 'file_name': file_name,
                              'segments_info': segments_info})

  def finalize(self) -> str:
    """Writes the JSON file; returns its path (the PNGs sit beside it)."""
    categories = [{'id': int(source_id), 'name': name, 'isthing': int(is_thing)}
                  for source_id, name, is_thing in zip(
                      self._info.source_ids, self._info.class_names,
                      self._info.is_thing)]
    with open(self._json_path, 'w') as f:
      json.dump({'annotations': self._annotations, 'categories': categories}, f)
    return self._json_path


def _as_text(image_id: ImageId) -> str:
  return image_id.decode() if isinstance(image_id, bytes) else str(image_id)


class CocoPanopticWriter(_PanopticWriter):
  """COCO panoptic results: integer image ids, PNGs named `%012d.png`."""

  def __init__(self, output_dir: str, info: dataset_info_lib.DatasetInfo,
               name: str = 'panoptic_predictions'):
    super().__init__(output_dir, info, name)

  def _segment_id(self, category_id, instance, is_thing):
    return category_id * self._info.label_divisor + instance

  def _normalized_image_id(self, image_id):
    text = _as_text(image_id)
    if not text.isdigit():
      raise ValueError(f'COCO image_id must be an integer, got {image_id!r}.')
    return int(text), f'{int(text):012d}.png'


class CityscapesPanopticWriter(_PanopticWriter):
  """Cityscapes panoptic results: image ids `<city>_<seq>_<frame>`.

  The default name is the one cityscapesscripts' evaluator looks for in
  $CITYSCAPES_RESULTS; a trailing `_leftImg8bit` (with or without `.png`) of
  the image id is dropped so that ids match the ground truth's.
  """

  def __init__(self, output_dir: str, info: dataset_info_lib.DatasetInfo,
               name: str = 'cityscapes_panoptic_val'):
    if info.label_divisor > 1000:
      raise ValueError(f'Cityscapes segment ids hold instances below 1000; got '
                       f'label_divisor {info.label_divisor}.')
    super().__init__(output_dir, info, name)

  def _segment_id(self, category_id, instance, is_thing):
    return category_id * 1000 + instance if is_thing else category_id

  def _normalized_image_id(self, image_id):
    text = _as_text(image_id)
    for suffix in ('.png', '_leftImg8bit'):
      text = text[:-len(suffix)] if text.endswith(suffix) else text
    return text, f'{text}_panoptic.png'


FORMATS = ('coco', 'cityscapes')


def make_writer(submission_format: str, output_dir: str,
                info: dataset_info_lib.DatasetInfo) -> _PanopticWriter:
  """The writer of `submission_format` ('coco' or 'cityscapes') into output_dir."""
  writers = {'coco': CocoPanopticWriter, 'cityscapes': CityscapesPanopticWriter}
  if submission_format not in writers:
    raise ValueError(f'Submission format {submission_format!r} is not one of {FORMATS}.')
  return writers[submission_format](output_dir, info)
