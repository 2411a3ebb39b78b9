"""Tests of the synthetic data set: COCO panoptic format, content, determinism."""
import filecmp
import json
import os

import numpy as np

from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import synthetic
from tests import conftest


def _load(root, split):
  with open(os.path.join(root, 'annotations', f'panoptic_{split}.json')) as f:
    return json.load(f)


def test_json_follows_coco_panoptic_format(synthetic_dir):
  data = _load(synthetic_dir, 'train')
  assert len(data['images']) == len(data['annotations']) == conftest.NUM_TRAIN
  categories = {c['id']: c for c in data['categories']}
  assert {c['isthing'] for c in categories.values()} == {0, 1}
  for annotation in data['annotations']:
    assert set(annotation) >= {'image_id', 'file_name', 'segments_info'}
    for segment in annotation['segments_info']:
      assert set(segment) >= {'id', 'category_id', 'iscrowd', 'area', 'bbox'}
      assert segment['category_id'] in categories


def test_areas_and_boxes_agree_with_the_png(synthetic_dir):
  data = _load(synthetic_dir, 'val')
  for annotation in data['annotations']:
    ids = panoptic_format.read_segment_ids(
        os.path.join(synthetic_dir, 'annotations', 'panoptic_val', annotation['file_name']))
    panoptic_format.check_segments_match(ids, annotation['segments_info'], 'val')
    for segment in annotation['segments_info']:
      mask = ids == segment['id']
      assert segment['area'] == mask.sum()
      ys, xs = np.nonzero(mask)
      assert segment['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]


def test_content_has_instances_crowd_stuff_and_void(synthetic_dir):
  info = dataset_info.get_dataset_info('synthetic')
  is_thing = {cid: t for cid, _, t in dataset_info.SYNTHETIC_CATEGORIES}
  data = _load(synthetic_dir, 'train')
  segments = [s for a in data['annotations'] for s in a['segments_info']]
  things = [s for s in segments if is_thing[s['category_id']] and not s['iscrowd']]
  assert len({s['category_id'] for s in things}) >= 3
  assert any(s['iscrowd'] for s in segments)
  assert {s['category_id'] for s in segments if not is_thing[s['category_id']]}
  per_image = [sum(is_thing[s['category_id']] for s in a['segments_info'])
               for a in data['annotations']]
  assert max(per_image) >= 3
  void = [(panoptic_format.read_segment_ids(os.path.join(
      synthetic_dir, 'annotations', 'panoptic_train', a['file_name'])) == 0).mean()
          for a in data['annotations']]
  assert 0 < max(void) < 0.2
  assert info.num_classes == len(data['categories'])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  config = synthetic.SyntheticConfig(height=48, width=64)
  for name, seed in (('a', 5), ('b', 5), ('c', 6)):
    synthetic.write_split(str(tmp_path / name), 'val', 3, config, seed)
  png = os.path.join('annotations', 'panoptic_val', '000001000001.png')
  assert filecmp.cmp(tmp_path / 'a' / png, tmp_path / 'b' / png, shallow=False)
  assert filecmp.cmp(tmp_path / 'a' / 'val' / '000001000001.jpg',
                     tmp_path / 'b' / 'val' / '000001000001.jpg', shallow=False)
  assert not filecmp.cmp(tmp_path / 'a' / png, tmp_path / 'c' / png, shallow=False)
