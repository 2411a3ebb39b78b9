"""Converter tests: bad input is named, shards are atomic, Cityscapes round trip."""
import glob
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from cmt_deeplab_tf.data import convert_cityscapes
from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import synthetic
from cmt_deeplab_tf.data import tfrecord_format

Error = panoptic_format.PanopticFormatError


@pytest.fixture
def small_set(tmp_path):
  root = str(tmp_path / 'set')
  json_path = synthetic.write_split(root, 'val', 2, synthetic.SyntheticConfig(48, 48), 1)
  return root, json_path


def _convert(small_set, output, **kwargs):
  root, json_path = small_set
  return convert_coco.convert_split('synthetic', 'val', os.path.join(root, 'val'),
                                    json_path, None, output, num_shards=2, num_workers=1,
                                    **kwargs)


def _edit_json(json_path, edit):
  with open(json_path) as f:
    data = json.load(f)
  edit(data)
  with open(json_path, 'w') as f:
    json.dump(data, f)


def test_missing_image_is_named(small_set, tmp_path):
  os.remove(os.path.join(small_set[0], 'val', '000001000002.jpg'))
  with pytest.raises(Error, match=r'Image file not found: .*000001000002\.jpg'):
    _convert(small_set, str(tmp_path / 'out'))


def test_missing_png_is_named(small_set, tmp_path):
  os.remove(os.path.join(small_set[0], 'annotations', 'panoptic_val', '000001000001.png'))
  with pytest.raises(Error, match=r'Panoptic PNG not found: .*000001000001\.png'):
    _convert(small_set, str(tmp_path / 'out'))


def test_corrupt_image_is_named(small_set, tmp_path):
  with open(os.path.join(small_set[0], 'val', '000001000001.jpg'), 'wb') as f:
    f.write(b'not a jpeg at all')
  with pytest.raises(Error, match=r'Corrupt or unreadable image .*000001000001\.jpg'):
    _convert(small_set, str(tmp_path / 'out'))


def test_json_segment_absent_from_png_is_named(small_set, tmp_path):
  def add_segment(data):
    data['annotations'][0]['segments_info'].append(
        {'id': 12345, 'category_id': 1, 'iscrowd': 0, 'area': 1, 'bbox': [0, 0, 1, 1]})
  _edit_json(small_set[1], add_segment)
  with pytest.raises(Error, match=r'000001000001\.png.*\[12345\] do not occur in the PNG'):
    _convert(small_set, str(tmp_path / 'out'))


def test_png_segment_absent_from_json_is_named(small_set, tmp_path):
  removed = []
  _edit_json(small_set[1],
             lambda data: removed.append(data['annotations'][1]['segments_info'].pop()))
  with pytest.raises(Error, match=rf'000001000002\.png.*\[{removed[0]["id"]}\].*absent'):
    _convert(small_set, str(tmp_path / 'out'))


def test_unknown_category_is_named(small_set, tmp_path):
  def set_category(data):
    data['annotations'][0]['segments_info'][0]['category_id'] = 99
  _edit_json(small_set[1], set_category)
  with pytest.raises(Error, match=r'000001000001\.png.*unknown category_id 99'):
    _convert(small_set, str(tmp_path / 'out'))
  _edit_json(small_set[1], lambda data: data['categories'].append(
      {'id': 99, 'name': 'alien', 'isthing': 1}))
  with pytest.raises(Error, match=r'category id 99 .*alien.* not a synthetic class'):
    _convert(small_set, str(tmp_path / 'out'))


def test_shards_are_atomic_and_not_overwritten_silently(small_set, tmp_path):
  output = str(tmp_path / 'out')
  paths = _convert(small_set, output)
  assert [os.path.basename(p) for p in paths] == [
      'val-00000-of-00002.tfrecord', 'val-00001-of-00002.tfrecord']
  with pytest.raises(FileExistsError, match='--overwrite'):
    _convert(small_set, output)
  os.remove(os.path.join(small_set[0], 'val', '000001000002.jpg'))
  with pytest.raises(Error):
    _convert(small_set, output, overwrite=True)
  # The failed shard never appears under its final name, and no temporary is left.
  assert not os.path.exists(paths[1])
  assert not glob.glob(os.path.join(output, '*.tmp'))
  records = list(tf.data.TFRecordDataset(paths[0]))
  assert len(records) == 1


def _write_cityscapes(root):
  """A two-image Cityscapes tree in the raw `*_gtFine_instanceIds.png` form."""
  rng = np.random.default_rng(0)
  for name in ('aachen_000000_000019', 'aachen_000001_000019'):
    ids = np.full((32, 64), 7, np.uint16)                 # road (label 7)
    ids[:10] = 23                                         # sky
    ids[12:20, 5:15] = 26 * 1000 + 0                      # car instance 0
    ids[12:20, 20:30] = 26 * 1000 + 1                     # car instance 1
    ids[22:30, 40:50] = 24                                # person crowd (no instance)
    ids[0:3, 60:64] = 0                                   # unlabeled -> void
    gt_dir = os.path.join(root, 'gtFine', 'val', 'aachen')
    image_dir = os.path.join(root, 'leftImg8bit', 'val', 'aachen')
    os.makedirs(gt_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    Image.fromarray(ids).save(os.path.join(gt_dir, f'{name}_gtFine_instanceIds.png'))
    Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(
        os.path.join(image_dir, f'{name}_leftImg8bit.png'))
    yield name, ids


def test_cityscapes_round_trip_through_cityscapesscripts(tmp_path):
  from cityscapesscripts.helpers import labels as cs_labels
  from cityscapesscripts.preparation import createPanopticImgs
  root = str(tmp_path)
  raw = dict(_write_cityscapes(root))
  gt_fine = os.path.join(root, 'gtFine')
  createPanopticImgs.convert2panoptic(gt_fine, gt_fine, setNames=['val'])
  paths = convert_cityscapes.convert_split(root, 'val', str(tmp_path / 'out'), 1, 1)
  for record in tf.data.TFRecordDataset(paths):
    example = tfrecord_format.decode_example(record)
    panoptic = example['panoptic'].numpy()
    ids = raw[example['image_id'].numpy().decode()]
    label_ids = np.where(ids >= 1000, ids // 1000, ids)
    train_ids = np.vectorize(lambda i: cs_labels.id2label[i].trainId)(label_ids)
    expected_semantic = np.where(train_ids == 255, 255, train_ids)
    np.testing.assert_array_equal(panoptic // 1000, expected_semantic)
    instance = panoptic % 1000
    car_a, car_b = instance[ids == 26000], instance[ids == 26001]
    assert len(set(car_a)) == len(set(car_b)) == 1 and car_a[0] != car_b[0] > 0 < car_a[0]
    assert (instance[ids == 24] == 0).all()               # crowd person
    assert (instance[label_ids == 7] == 0).all()           # stuff
