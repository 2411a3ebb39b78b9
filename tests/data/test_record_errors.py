"""Corrupt TFRecords: named by shard and record index, found by verify, skipped on request."""
import glob
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.data import verify
from tests.data.corrupt_records import flip_bytes, replace_image, truncate_in

INFO = dataset_info.get_dataset_info('synthetic')


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture()
def shards(tfrecord_dir, tmp_path):
  """A copy of the synthetic val shards (2 shards, 2 records each) + class table."""
  target = tmp_path / 'records'
  target.mkdir()
  for path in glob.glob(os.path.join(tfrecord_dir, 'val-*')):
    shutil.copy(path, target)
  shutil.copy(os.path.join(tfrecord_dir, class_table.CLASS_TABLE_FILE), target)
  return sorted(glob.glob(str(target / 'val-*')))


def _reasons(reports):
  return {(os.path.basename(b.shard), b.index): b.reason
          for report in reports for b in report.bad}


def test_verify_names_each_corruption(shards):
  assert not _reasons(verify.verify_shards(shards, INFO))
  flip_bytes(shards[0], 1)
  replace_image(shards[1], 0)
  reasons = _reasons(verify.verify_shards(shards, INFO, num_workers=2))
  assert set(reasons) == {(os.path.basename(shards[0]), 1),
                          (os.path.basename(shards[1]), 0)}
  assert reasons[os.path.basename(shards[0]), 1].startswith(record_errors.UNREADABLE)
  assert 'image does not decode' in reasons[os.path.basename(shards[1]), 0]


def test_verify_finds_truncation_and_inconsistent_labels(shards):
  truncate_in(shards[0], 1)
  records = [r.numpy() for r in tf.data.TFRecordDataset(shards[1])]
  example = tf.train.Example.FromString(records[1])
  example.features.feature[tfrecord_format.LABEL_DIVISOR].int64_list.value[:] = [1000]
  del example.features.feature[tfrecord_format.IMAGE_ID]
  # Class id 9 of the 8 synthetic classes; a stuff id with an instance.
  label = np.full([4, 4], 9 * INFO.label_divisor, np.int32)
  assert verify._label_problem(label, INFO.label_divisor, INFO).startswith(
      'class ids [9] outside the 8 classes')
  stuff = INFO.stuff_ids[0] * INFO.label_divisor + 3
  assert 'stuff or void ids with an instance' in verify._label_problem(
      np.full([2, 2], stuff), INFO.label_divisor, INFO)
  assert verify.record_problem(example.SerializeToString(), INFO) == (
      f'missing field(s) {tfrecord_format.IMAGE_ID}')
  example.features.feature[tfrecord_format.IMAGE_ID].bytes_list.value[:] = [b'x']
  assert verify.record_problem(example.SerializeToString(), INFO).startswith(
      'label divisor 1000')
  reasons = _reasons(verify.verify_shards(shards, INFO))
  assert list(reasons) == [(os.path.basename(shards[0]), 1)]


def test_check_raises_and_prints_a_table(shards):
  replace_image(shards[1], 1)
  printed = []
  with pytest.raises(record_errors.BadRecordsError, match='1 bad records in 1 of 2'):
    verify.check(os.path.join(os.path.dirname(shards[0]), 'val-*'), report=printed.append)
  assert printed[0].startswith('4 records read in 2 shards')
  assert f'| {os.path.basename(shards[1])} | 1 | image does not decode' in printed[1]


def _eval_batches(pattern):
  dataset = pipeline.panoptic_dataset(pattern, INFO, is_training=False, batch_size=1,
                                      crop_size=(97, 97), max_num_masks=8)
  with record_errors.named_record_errors():
    return [batch for batch in dataset]


@pytest.mark.parametrize('corrupt, reason', [
    (flip_bytes, record_errors.UNREADABLE),
    (truncate_in, record_errors.UNREADABLE),
    (replace_image, record_errors.UNDECODABLE)])
def test_default_pipeline_stops_at_the_first_bad_record_naming_it(shards, corrupt, reason):
  pattern = os.path.join(os.path.dirname(shards[0]), 'val-*')
  assert len(_eval_batches(pattern)) == 4
  corrupt(shards[1], 1)
  with pytest.raises(record_errors.BadRecordsError) as raised:
    _eval_batches(pattern)
  assert f'{shards[1]}#1 {reason}' in str(raised.value)
  assert 'stopping at the first' in str(raised.value)


def _training_batches(pattern, num_batches):
  dataset = pipeline.panoptic_dataset(pattern, INFO, is_training=True, batch_size=1,
                                      crop_size=(33, 33), max_num_masks=8, seed=0)
  with record_errors.named_record_errors():
    return [batch for batch in dataset.take(num_batches)]


def test_skip_mode_skips_counts_and_stops_above_the_fraction(shards):
  pattern = os.path.join(os.path.dirname(shards[0]), 'val-*')
  replace_image(shards[0], 0)
  truncate_in(shards[1], 1)
  # Every pass over the data: 2 good records, 2 bad (the undecodable one and the
  # truncation, which ends its shard); in order, shuffling only the shards.
  gin.bind_parameter('panoptic_dataset.skip_bad_records', True)
  gin.bind_parameter('panoptic_dataset.deterministic', True)
  gin.bind_parameter('panoptic_dataset.shuffle_buffer_size', 1)
  gin.bind_parameter('panoptic_dataset.max_bad_fraction', 0.01)
  # More than 0.01 * 100: the second bad record stops it.
  with pytest.raises(record_errors.BadRecordsError,
                     match='2 of .* more than panoptic_dataset.max_bad_fraction = 0.01: '
                     r'.*#\d (undecodable|unreadable).*; .*#\d (undecodable|unreadable)'):
    _training_batches(pattern, 4)
  gin.bind_parameter('panoptic_dataset.max_bad_fraction', 0.5)
  batches = _training_batches(pattern, 6)
  ids = [batch[common.IMAGE_ID].numpy()[0] for batch in batches]
  good = [list(tf.data.TFRecordDataset(shards[0]))[1], next(iter(
      tf.data.TFRecordDataset(shards[1])))]
  assert set(ids) == {tf.train.Example.FromString(r.numpy()).features.feature[
      tfrecord_format.IMAGE_ID].bytes_list.value[0] for r in good}
  skipped = [int(batch[common.SKIPPED_RECORDS].numpy()[0]) for batch in batches]
  # The 2nd good record comes after 0-2 bad ones, the 6th (3 passes) after 4-6.
  assert skipped == sorted(skipped) and skipped[1] <= 2 and 4 <= skipped[-1] <= 6


def test_bad_fraction_must_be_a_fraction(shards):
  gin.bind_parameter('panoptic_dataset.max_bad_fraction', 1.0)
  with pytest.raises(ValueError, match='max_bad_fraction must be in'):
    _training_batches(shards[0], 1)
