r"""Checks every record of panoptic TFRecord shards; prints the bad ones per shard.

  python -m cmt_deeplab_tf.data.verify --file_pattern='tfrecords/coco/train-*' \
      [--num_workers=8] [--dataset=coco]

Per record: the record's checksum (the reader's), every field of the format
present (`tfrecord_format`), the image and the panoptic label decode (with the
training pipeline's decoders), their sizes equal the stored height and width,
the label divisor and every id agree with the class table (train id < number of
classes or void, stuff and void with instance 0, instances below the divisor).
The class table is the `class_table.json` beside the shards, or `--dataset`'s.
Shards are checked in parallel threads. Prints a table of the bad records
(shard, record index, reason) and exits with status 1 if there is any. After a
read error the rest of that shard cannot be read (the reader cannot find the
next record), which the table says.
"""
import concurrent.futures
import dataclasses
import os
from typing import List, Optional, Sequence

from absl import flags
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.data import tfrecord_format

_FIELDS = (tfrecord_format.IMAGE_ENCODED, tfrecord_format.IMAGE_FORMAT,
           tfrecord_format.IMAGE_FILENAME, tfrecord_format.IMAGE_ID,
           tfrecord_format.IMAGE_HEIGHT, tfrecord_format.IMAGE_WIDTH,
           tfrecord_format.PANOPTIC_ENCODED, tfrecord_format.LABEL_DIVISOR)


@dataclasses.dataclass(frozen=True)
class BadRecord:
  shard: str
  index: int
  reason: str


@dataclasses.dataclass(frozen=True)
class ShardReport:
  shard: str
  num_records: int  # Records read (a read error ends the shard).
  bad: List[BadRecord]


def _feature(example: tf.train.Example, key: str):
  feature = example.features.feature[key]
  values = feature.bytes_list.value or feature.int64_list.value
  return values[0]


def record_problem(serialized: bytes, info: dataset_info_lib.DatasetInfo) -> Optional[str]:
  """Why the serialized example is unusable for `info`, or None."""
  try:
    example = tf.train.Example.FromString(serialized)
  except Exception as e:  # pylint: disable=broad-except  (protobuf's DecodeError)
    return f'not a tf.train.Example ({cli.one_line(e)[:100]})'
  missing = [k for k in _FIELDS if not (example.features.feature[k].bytes_list.value or
                                         example.features.feature[k].int64_list.value)]
  if missing:
    return f'missing field(s) {", ".join(missing)}'
  height = _feature(example, tfrecord_format.IMAGE_HEIGHT)
  width = _feature(example, tfrecord_format.IMAGE_WIDTH)
  try:
    image = tfrecord_format.decode_image(_feature(example, tfrecord_format.IMAGE_ENCODED))
  except tf.errors.OpError as e:
    return f'image does not decode ({cli.one_line(e.message)[:100]})'
  try:
    panoptic = tfrecord_format.decode_panoptic_png(
        _feature(example, tfrecord_format.PANOPTIC_ENCODED)).numpy()
  except tf.errors.OpError as e:
    return f'panoptic label does not decode ({cli.one_line(e.message)[:100]})'
  if tuple(image.shape[:2]) != (height, width) or panoptic.shape != (height, width):
    return (f'sizes disagree: stored {height}x{width}, image {image.shape[0]}x'
            f'{image.shape[1]}, label {panoptic.shape[0]}x{panoptic.shape[1]}')
  return _label_problem(panoptic, _feature(example, tfrecord_format.LABEL_DIVISOR), info)


def _label_problem(panoptic: np.ndarray, divisor: int,
                   info: dataset_info_lib.DatasetInfo) -> Optional[str]:
  if divisor != info.label_divisor:
    return (f'label divisor {divisor}, the class table of {info.name!r} has '
            f'{info.label_divisor}')
  ids = np.unique(panoptic)
  classes, instances = ids // divisor, ids % divisor
  void = classes == info.ignore_label
  unknown = sorted(set(classes[(classes >= info.num_classes) & ~void].tolist()))
  if unknown:
    return f'class ids {unknown} outside the {info.num_classes} classes of {info.name!r}'
  is_thing = np.asarray(info.is_thing)[np.where(void, 0, classes)]
  bad = ids[(void | ~is_thing) & (instances != 0)]
  if bad.size:
    return f'stuff or void ids with an instance number: {bad[:5].tolist()}'
  return None


def verify_shard(shard: str, info: dataset_info_lib.DatasetInfo) -> ShardReport:
  """Reads and checks every record of one shard."""
  bad, index = [], 0
  iterator = iter(tf.data.TFRecordDataset(shard))
  while True:
    try:
      serialized = next(iterator).numpy()
    except StopIteration:
      break
    except tf.errors.OpError as e:
      bad.append(BadRecord(shard, index, f'{record_errors.UNREADABLE}: '
                           f'{cli.one_line(e.message)[:80]}; the rest of the shard is '
                           'unreadable'))
      break
    problem = record_problem(serialized, info)
    if problem:
      bad.append(BadRecord(shard, index, problem))
    index += 1
  return ShardReport(shard, index, bad)


def verify_shards(shards: Sequence[str], info: dataset_info_lib.DatasetInfo,
                  num_workers: int = 4) -> List[ShardReport]:
  """`verify_shard` of each shard, `num_workers` at a time, in order."""
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    return list(pool.map(lambda shard: verify_shard(shard, info), shards))


def markdown_table(reports: Sequence[ShardReport]) -> str:
  rows = ['| shard | record | reason |', '|---|---|---|']
  rows += [f'| {os.path.basename(b.shard)} | {b.index} | {b.reason} |'
           for report in reports for b in report.bad]
  return '\n'.join(rows)


def check(file_pattern: str, dataset: Optional[str] = None, num_workers: int = 4,
          report=print) -> List[ShardReport]:
  """Verifies the shards of `file_pattern`; reports a summary and the bad records.

  Raises:
    record_errors.BadRecordsError: if any record is bad.
    ValueError: if the pattern matches nothing or no class table is known.
  """
  shards = pipeline.list_shards(file_pattern)
  info = class_table.for_shards(file_pattern)
  if info is None:
    if not dataset:
      raise ValueError(f'No {class_table.CLASS_TABLE_FILE} beside {file_pattern}; name '
                       'the data set with --dataset.')
    info = dataset_info_lib.get_dataset_info(dataset)
  reports = verify_shards(shards, info, num_workers)
  num_bad = sum(len(r.bad) for r in reports)
  report(f'{sum(r.num_records for r in reports)} records read in {len(shards)} shards '
         f'of {file_pattern} (class table {info.name!r}): {num_bad} bad.')
  if num_bad:
    report(markdown_table(reports))
    raise record_errors.BadRecordsError(
        f'{num_bad} bad records in {sum(bool(r.bad) for r in reports)} of {len(shards)} '
        f'shards of {file_pattern} (listed above).')
  return reports


def _define_flags():
  flags.DEFINE_string('file_pattern', None, 'Comma-separated globs of TFRecord shards.')
  flags.DEFINE_string('dataset', None,
                      "Built-in class table for shards without a class_table.json.")
  flags.DEFINE_integer('num_workers', 4, 'Shards checked in parallel.')


def main(argv):
  del argv
  check(flags.FLAGS.file_pattern, flags.FLAGS.dataset, flags.FLAGS.num_workers)


def run():
  _define_flags()
  flags.mark_flag_as_required('file_pattern')
  cli.run_main(main)


if __name__ == '__main__':
  run()
