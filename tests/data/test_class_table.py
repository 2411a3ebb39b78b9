"""Class tables of data sets that are not built in: from the JSON, beside the shards,
in the run dir; and the errors that keep them consistent."""
import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.modeling import builder
from tests.data import custom_set


@pytest.fixture(scope='module')
def custom_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('custom'))
  custom_set.write(root, {'val': 4}, size=48, seed=1)
  return root


def _convert(root, output, split='val', **kwargs):
  return convert_coco.convert_split(
      custom_set.NAME, split, os.path.join(root, 'val'),
      os.path.join(root, 'annotations', 'panoptic_val.json'), None, output,
      num_shards=1, num_workers=1, **kwargs)


def test_custom_set_gets_its_table_from_the_json_and_keeps_its_ids(custom_dir, tmp_path):
  output = str(tmp_path / 'records')
  paths = _convert(custom_dir, output)
  info = class_table.read_class_table(os.path.join(output, 'class_table.json'))
  # Train ids follow increasing category id, whatever the JSON's order.
  assert info.source_ids == (3, 5, 8, 17, 64, 90, 240, 1001)
  assert info.is_thing == (True, False, False, False, False, False, False, True)
  assert info.class_names[0] == 'square' and info.class_names[-1] == 'disc'
  assert (info.name, info.label_divisor, info.num_classes) == (custom_set.NAME, 256, 8)
  assert class_table.for_shards(os.path.join(output, 'val-*')) == info
  # The shards hold train ids of that table.
  with open(os.path.join(custom_dir, 'annotations', 'panoptic_val.json')) as f:
    annotation = json.load(f)['annotations'][0]
  record = next(iter(tf.data.TFRecordDataset(paths)))
  panoptic = tfrecord_format.decode_example(record)['panoptic'].numpy()
  expected = {info.source_ids.index(s['category_id']) for s in annotation['segments_info']}
  present = set(np.unique(panoptic // 256).tolist()) - {255}
  assert present == expected


def test_label_divisor_fits_the_largest_instance_count(custom_dir):
  assert [dataset_info.label_divisor_for(n) for n in (0, 255, 256, 300, 600)] == [
      256, 256, 512, 512, 1024]
  data = {'categories': [{'id': 7, 'name': 'bead', 'isthing': 1}],
          'annotations': [{'segments_info': [{'id': i + 1, 'category_id': 7}
                                             for i in range(300)]}]}
  assert convert_coco.class_table_of('beads', data, 'beads.json').label_divisor == 512
  assert convert_coco.class_table_of('beads', data, 'b.json', 1000).label_divisor == 1000
  with pytest.raises(ValueError, match='--label_divisor=256 is too small: b.json has 300'):
    convert_coco.class_table_of('beads', data, 'b.json', 256)
  with pytest.raises(ValueError, match='fixed for the built-in --dataset=coco'):
    convert_coco.class_table_of('coco', data, 'b.json', 512)


@pytest.mark.parametrize('categories, message', [
    ([{'id': 1, 'name': 'a'}], r"x.json: categories\[0\] .* has no 'isthing'"),
    ([{'id': 1, 'name': 'a', 'isthing': 1}, {'id': 1, 'name': 'b', 'isthing': 0}],
     r'x.json: duplicate category ids \[1\]'),
    ([{'id': i, 'name': str(i), 'isthing': 0} for i in range(256)],
     'x.json: 256 classes; train ids must stay below the ignore label 255'),
    ([], 'x.json: `categories` is empty'),
])
def test_bad_categories_are_named(categories, message):
  with pytest.raises(ValueError, match=message):
    dataset_info.from_categories('x', categories, 256, 'x.json')


def test_a_second_split_with_another_table_is_refused(custom_dir, tmp_path):
  output = str(tmp_path / 'records')
  _convert(custom_dir, output)
  with pytest.raises(ValueError, match="class table of 'my_shapes' .* but this conversion "
                                       "uses 'my_shapes' .*label divisor 512"):
    _convert(custom_dir, output, split='test', label_divisor=512)
  with pytest.raises(FileExistsError, match='--overwrite'):
    _convert(custom_dir, output)  # Same table, but the shards exist.
  _convert(custom_dir, output, overwrite=True, label_divisor=512)
  assert class_table.for_shards(os.path.join(output, 'val-*')).label_divisor == 512


def test_run_dir_refuses_another_class_table(tmp_path):
  synthetic = dataset_info.get_dataset_info('synthetic')
  run_dir.record_class_table(str(tmp_path), synthetic)
  run_dir.record_class_table(str(tmp_path), synthetic)  # The same: fine.
  assert run_dir.read_class_table(str(tmp_path)) == synthetic
  with pytest.raises(ValueError, match=r"trained for 'synthetic' \(8 classes.*but the data "
                                       r"are 'coco' \(133 classes.*do not match"):
    run_dir.record_class_table(str(tmp_path), dataset_info.get_dataset_info('coco'))
  with pytest.raises(ValueError, match='has no class_table.json'):
    run_dir.read_class_table(str(tmp_path / 'elsewhere'))


def test_a_gin_class_count_that_disagrees_is_an_error():
  gin.clear_config()
  try:
    assert builder.num_classes_for(8) == 8
    gin.bind_parameter('build_model.num_classes', 133)
    with pytest.raises(ValueError, match='build_model.num_classes=133 .* has 8 classes'):
      builder.num_classes_for(8)
  finally:
    gin.clear_config()
