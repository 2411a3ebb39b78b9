"""Class tables on disk: `class_table.json` beside the shards and in run directories.

`convert_coco` / `convert_cityscapes` write the table of the converted data set
beside its shards; training copies it into the model dir; evaluation, export,
predict, visualize and the submission writers read it from there. The file is
`DatasetInfo.to_json()`:

  {"name": ..., "label_divisor": 256, "ignore_label": 255,
   "categories": [{"id": 3, "name": "cat", "isthing": 1}, ...]}   # train-id order

Paths go through `tf.io.gfile`, so run directories on GCS work too.
"""
import json
import os
from typing import Optional

import tensorflow as tf

from cmt_deeplab_tf.data import dataset_info

CLASS_TABLE_FILE = 'class_table.json'


def class_table_path(directory: str) -> str:
  return os.path.join(directory, CLASS_TABLE_FILE)


def read_class_table(path: str) -> dataset_info.DatasetInfo:
  """Reads a `CLASS_TABLE_FILE`."""
  if not tf.io.gfile.exists(path):
    raise ValueError(f'Class table {path} does not exist.')
  with tf.io.gfile.GFile(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from e
  return dataset_info.from_json(data, path)


def find_class_table(directory: str) -> Optional[dataset_info.DatasetInfo]:
  """The table in `directory`, or None if it holds none."""
  path = class_table_path(directory)
  return read_class_table(path) if tf.io.gfile.exists(path) else None


def write_class_table(directory: str, info: dataset_info.DatasetInfo) -> str:
  """Writes `info` as `directory/CLASS_TABLE_FILE` (atomically); returns the path."""
  path = class_table_path(directory)
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(info.to_json(), f, indent=1)
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return path


def write_beside_shards(output_dir: str, info: dataset_info.DatasetInfo,
                        overwrite: bool) -> str:
  """Writes the table a converter used beside its shards.

  Every split converted into `output_dir` must use the same table (the same
  categories and label divisor); a different one is refused unless `overwrite`.
  """
  existing = find_class_table(output_dir)
  if existing is not None and existing != info and not overwrite:
    raise ValueError(
        f'{class_table_path(output_dir)} holds the class table of '
        f'{dataset_info.describe(existing)}, but this conversion uses '
        f'{dataset_info.describe(info)}; convert every split with the same categories '
        'and --label_divisor, or pass --overwrite and reconvert the other splits.')
  return write_class_table(output_dir, info)


def for_shards(file_pattern: str) -> Optional[dataset_info.DatasetInfo]:
  """The table beside the shards of a comma-separated list of globs, if any.

  Raises:
    ValueError: if shard folders hold different tables.
  """
  found = {}
  for pattern in file_pattern.split(','):
    for path in tf.io.gfile.glob(pattern.strip()):
      directory = os.path.dirname(path)
      if directory not in found:
        found[directory] = find_class_table(directory)
  tables = {d: t for d, t in found.items() if t is not None}
  distinct = {t for t in tables.values()}
  if len(distinct) > 1:
    described = ', '.join(f'{class_table_path(d)}: {dataset_info.describe(t)}'
                          for d, t in sorted(tables.items()))
    raise ValueError(f'The shards of {file_pattern!r} come with different class tables '
                     f'({described}).')
  return distinct.pop() if distinct else None
