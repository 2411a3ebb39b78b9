"""Test-wide settings and the small synthetic data set shared by all test packages."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from cmt_deeplab_tf.data import convert_coco  # pylint: disable=wrong-import-position
from cmt_deeplab_tf.data import synthetic  # pylint: disable=wrong-import-position

NUM_TRAIN, NUM_VAL, SIZE = 10, 4, 96
CONFIG = synthetic.SyntheticConfig(height=SIZE, width=SIZE, crowd_probability=0.5)


@pytest.fixture(scope='session')
def synthetic_dir(tmp_path_factory):
  """A synthetic data set in the COCO panoptic layout (made once per session)."""
  root = str(tmp_path_factory.mktemp('synthetic'))
  synthetic.write_split(root, 'train', NUM_TRAIN, CONFIG, seed=3)
  synthetic.write_split(root, 'val', NUM_VAL, CONFIG, seed=3)
  return root


@pytest.fixture(scope='session')
def tfrecord_dir(synthetic_dir, tmp_path_factory):
  """The synthetic set converted to TFRecords: train-* (2 shards), val-* (2 shards)."""
  output = str(tmp_path_factory.mktemp('tfrecords'))
  for split in ('train', 'val'):
    convert_coco.convert_split(
        'synthetic', split, os.path.join(synthetic_dir, split),
        os.path.join(synthetic_dir, 'annotations', f'panoptic_{split}.json'), None,
        output, num_shards=2, num_workers=1)
  return output
