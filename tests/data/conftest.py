"""A small synthetic data set and its TFRecords, made once per test session."""
import os

import pytest

from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import synthetic

NUM_TRAIN, NUM_VAL, SIZE = 10, 4, 96
CONFIG = synthetic.SyntheticConfig(height=SIZE, width=SIZE, crowd_probability=0.5)


@pytest.fixture(scope='session')
def synthetic_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('synthetic'))
  synthetic.write_split(root, 'train', NUM_TRAIN, CONFIG, seed=3)
  synthetic.write_split(root, 'val', NUM_VAL, CONFIG, seed=3)
  return root


@pytest.fixture(scope='session')
def tfrecord_dir(synthetic_dir, tmp_path_factory):
  output = str(tmp_path_factory.mktemp('tfrecords'))
  for split in ('train', 'val'):
    convert_coco.convert_split(
        'synthetic', split, os.path.join(synthetic_dir, split),
        os.path.join(synthetic_dir, 'annotations', f'panoptic_{split}.json'), None,
        output, num_shards=2, num_workers=1)
  return output
