"""Converts a data set in the COCO panoptic format to sharded TFRecords.

Shared by `convert_coco` and `convert_cityscapes`, which differ only in where the
images live and in their class table. Shards are written in parallel processes,
each first under a temporary name and then renamed, so a crash never leaves a
truncated shard behind under its final name. The class table used is written
beside the shards (`class_table.CLASS_TABLE_FILE`), where training finds it.
"""
import collections
import concurrent.futures
import dataclasses
import glob
import multiprocessing
import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import tfrecord_format

PanopticFormatError = panoptic_format.PanopticFormatError


@dataclasses.dataclass(frozen=True)
class ExampleSource:
  """Where one example lives on disk and how it is annotated."""
  image_path: str
  png_path: str
  image_id: str
  segments_info: List[Dict]


def category_to_train_id(categories: Sequence[Dict], info: dataset_info_lib.DatasetInfo,
                         json_path: str) -> Dict[int, int]:
  """Maps the JSON's category ids to the data set's contiguous train ids."""
  train_ids = {source_id: i for i, source_id in enumerate(info.source_ids)}
  mapping = {}
  for category in categories:
    if category['id'] not in train_ids:
      raise PanopticFormatError(
          f'{json_path}: category id {category["id"]} ({category.get("name")!r}) is not a '
          f'{info.name} class; known ids: {sorted(train_ids)}.')
    train_id = train_ids[category['id']]
    if 'isthing' in category and bool(category['isthing']) != info.is_thing[train_id]:
      raise PanopticFormatError(
          f'{json_path}: category {category["id"]} has isthing={category["isthing"]}, '
          f'but {info.name} says {info.is_thing[train_id]}.')
    mapping[category['id']] = train_id
  return mapping


def panoptic_label(segment_ids: np.ndarray, segments_info: Sequence[Dict],
                   categories: Dict[int, int], info: dataset_info_lib.DatasetInfo,
                   png_path: str) -> np.ndarray:
  """Turns a segment-id map into a panoptic label in train ids.

  Thing segments get instance ids 1, 2, ... per class in `segments_info` order,
  crowd thing segments get instance 0, stuff segments instance 0, void pixels
  `ignore_label * label_divisor`.

  Args:
    segment_ids: int64 [H, W], 0 = void.
    segments_info: the annotation's segments.
    categories: category id -> train id.
    info: the data set's class table.
    png_path: the PNG's path, for error messages.

  Returns:
    int64 [H, W] panoptic label.
  """
  panoptic_format.check_segments_match(segment_ids, segments_info, png_path)
  lookup_keys = [panoptic_format.VOID_SEGMENT_ID]
  lookup_values = [info.ignore_label * info.label_divisor]
  next_instance = {}
  for segment in segments_info:
    if segment['category_id'] not in categories:
      raise PanopticFormatError(
          f'{png_path}: segment {segment["id"]} has unknown category_id '
          f'{segment["category_id"]}.')
    train_id = categories[segment['category_id']]
    instance = 0
    if info.is_thing[train_id] and not segment.get('iscrowd', 0):
      instance = next_instance.get(train_id, 1)
      next_instance[train_id] = instance + 1
      if instance >= info.label_divisor:
        raise PanopticFormatError(
            f'{png_path}: more than {info.label_divisor - 1} instances of class '
            f'{info.class_names[train_id]!r}; raise the label divisor.')
    lookup_keys.append(segment['id'])
    lookup_values.append(train_id * info.label_divisor + instance)
  order = np.argsort(lookup_keys)
  keys, values = np.asarray(lookup_keys)[order], np.asarray(lookup_values)[order]
  return values[np.searchsorted(keys, segment_ids)]


def _image_format(path: str) -> str:
  return 'png' if path.lower().endswith('.png') else 'jpeg'


def max_thing_instances(data: Dict, info: dataset_info_lib.DatasetInfo) -> int:
  """The most non-crowd instances of one thing class in one image of a panoptic JSON."""
  is_thing = dict(zip(info.source_ids, info.is_thing))
  most = 0
  for annotation in data['annotations']:
    counts = collections.Counter(
        s['category_id'] for s in annotation['segments_info']
        if is_thing.get(s['category_id']) and not s.get('iscrowd', 0))
    most = max([most] + list(counts.values()))
  return most


def _write_shard(sources: Sequence[ExampleSource], categories: Dict[int, int],
                 info: dataset_info_lib.DatasetInfo, path: str) -> int:
  """Writes one shard atomically; runs in a worker process."""
  temporary = path + '.tmp'
  try:
    with tf.io.TFRecordWriter(temporary) as writer:
      for source in sources:
        image_bytes = panoptic_format.read_image_file(source.image_path)
        segment_ids = panoptic_format.read_segment_ids(source.png_path)
        label = panoptic_label(segment_ids, source.segments_info, categories, info,
                               source.png_path)
        example = tfrecord_format.make_example(
            image_bytes, _image_format(source.image_path),
            os.path.basename(source.image_path), source.image_id, label,
            info.label_divisor)
        writer.write(example.SerializeToString())
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return len(sources)


def shard_paths(output_dir: str, split: str, num_shards: int) -> List[str]:
  return [os.path.join(output_dir, f'{split}-{i:05d}-of-{num_shards:05d}.tfrecord')
          for i in range(num_shards)]


def convert(sources: Sequence[ExampleSource], categories: Dict[int, int],
            info: dataset_info_lib.DatasetInfo, output_dir: str, split: str,
            num_shards: int, num_workers: int, overwrite: bool = False) -> List[str]:
  """Writes `sources` into `num_shards` TFRecord shards; returns their paths.

  The class table `info` goes beside them; a folder already holding another
  table is refused unless `overwrite`.
  """
  if not sources:
    raise PanopticFormatError(f'No examples to convert for split {split!r}.')
  if num_shards < 1:
    raise ValueError(f'--num_shards must be >= 1, got {num_shards}.')
  os.makedirs(output_dir, exist_ok=True)
  existing = sorted(glob.glob(os.path.join(output_dir, f'{split}-*.tfrecord')))
  if existing and not overwrite:
    raise FileExistsError(
        f'{output_dir} already holds {len(existing)} {split} shards (e.g. {existing[0]}); '
        'pass --overwrite to replace them.')
  class_table.write_beside_shards(output_dir, info, overwrite)
  for path in existing:
    os.remove(path)
  num_shards = min(num_shards, len(sources))
  paths = shard_paths(output_dir, split, num_shards)
  chunks = [sources[i::num_shards] for i in range(num_shards)]
  if num_workers <= 1:
    for chunk, path in zip(chunks, paths):
      _write_shard(chunk, categories, info, path)
    return paths
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
    futures = [pool.submit(_write_shard, chunk, categories, info, path)
               for chunk, path in zip(chunks, paths)]
    for future in concurrent.futures.as_completed(futures):
      future.result()  # Re-raises a worker's error with its message.
  return paths


def sources_from_json(data: Dict, png_dir: str, image_path_fn) -> List[ExampleSource]:
  """Pairs each annotation of a panoptic JSON with its image and PNG paths.

  Args:
    data: the loaded panoptic JSON.
    png_dir: the folder of the annotations' PNGs.
    image_path_fn: maps a JSON `images` entry to the image's path.
  """
  images = {image['id']: image for image in data['images']}
  sources = []
  for annotation in data['annotations']:
    if annotation['image_id'] not in images:
      raise PanopticFormatError(
          f'Annotation {annotation["file_name"]} refers to image_id '
          f'{annotation["image_id"]}, which is absent from `images`.')
    image = images[annotation['image_id']]
    sources.append(ExampleSource(
        image_path=image_path_fn(image),
        png_path=os.path.join(png_dir, annotation['file_name']),
        image_id=str(annotation['image_id']), segments_info=annotation['segments_info']))
  return sources
