"""Round trips of the COCO and Cityscapes panoptic exports.

The COCO export is decoded with the panoptic conventions (rgb2id on the PNG,
segments_info of the JSON) and every segment is recovered. The Cityscapes
export is read by cityscapesscripts' own evaluation code against a ground truth
written in Cityscapes label ids, and its PQ statistics must equal ours.
"""
import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_eval
from cityscapesscripts.helpers import labels as cs_labels

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.evaluation import panoptic_quality
from cmt_deeplab_tf.evaluation import submission
from tests.evaluation import random_panoptic

COCO = dataset_info_lib.get_dataset_info('coco')
CITYSCAPES = dataset_info_lib.get_dataset_info('cityscapes')


def _read_png_ids(path):
  return cs_eval.rgb2id(np.array(Image.open(path), dtype=np.uint32))


def test_id_to_rgb_inverts_cityscapesscripts_rgb2id():
  ids = np.array([[0, 1, 255], [256, 65535, 256**3 - 1]])
  np.testing.assert_array_equal(
      cs_eval.rgb2id(panoptic_format.id_to_rgb(ids)), ids)


def test_coco_export_recovers_every_segment(tmp_path):
  rng = np.random.default_rng(0)
  predictions = {}
  writer = submission.CocoPanopticWriter(str(tmp_path), COCO)
  for image_id in (139, '285', b'632'):
    _, pred = random_panoptic.random_pair(rng, COCO, shape=(24, 40))
    # Banner, rug, person (instance 0), and banner again as another instance.
    pred[0, :4] = np.array([80, 132, 0, 80]) * COCO.label_divisor + [0, 0, 0, 5]
    writer.add(image_id, pred)
    predictions[int(image_id)] = pred
  json_path = writer.finalize()
  assert json_path == os.path.join(str(tmp_path), 'panoptic_predictions.json')
  with open(json_path) as f:
    exported = json.load(f)
  categories = {c['id']: c for c in exported['categories']}
  assert (categories[1]['name'], categories[92]['name'], categories[200]['name']) == (
      'person', 'banner', 'rug-merged')
  assert sorted(a['image_id'] for a in exported['annotations']) == [139, 285, 632]
  divisor = COCO.label_divisor
  for annotation in exported['annotations']:
    assert annotation['file_name'] == f"{annotation['image_id']:012d}.png"
    pred = predictions[annotation['image_id']]
    ids = _read_png_ids(tmp_path / 'panoptic_predictions' / annotation['file_name'])
    segments = {s['id']: s for s in annotation['segments_info']}
    np.testing.assert_array_equal(ids == 0, pred // divisor == COCO.ignore_label)
    assert set(np.unique(ids[ids > 0]).tolist()) == set(segments)
    recovered = set()
    for segment_id, segment in segments.items():
      mask = ids == segment_id
      (semantic,) = np.unique(pred[mask] // divisor)
      assert segment['category_id'] == COCO.source_ids[semantic]
      assert categories[segment['category_id']]['isthing'] == COCO.is_thing[semantic]
      if COCO.is_thing[semantic]:
        (panoptic_id,) = np.unique(pred[mask])
        np.testing.assert_array_equal(mask, pred == panoptic_id)
      else:  # One segment per stuff class, whatever the instance ids.
        np.testing.assert_array_equal(mask, pred // divisor == semantic)
        panoptic_id = semantic * divisor
      recovered.add(int(panoptic_id))
      ys, xs = np.nonzero(mask)
      assert segment['area'] == mask.sum()
      assert segment['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
      assert segment['iscrowd'] == 0
    assert len(recovered) == len(segments)


def _write_cityscapes_gt(folder, image_id, gt):
  """Ground truth as cityscapesscripts' createPanopticImgs.py writes it."""
  segment_ids = np.zeros(gt.shape, np.int64)
  segments = []
  for panoptic_id in np.unique(gt):
    train_id, instance = divmod(int(panoptic_id), CITYSCAPES.label_divisor)
    if train_id == CITYSCAPES.ignore_label:
      continue
    label = cs_labels.trainId2label[train_id]
    crowd = label.hasInstances and instance == 0
    segment_id = label.id * 1000 + instance if instance else label.id
    mask = gt == panoptic_id
    segment_ids[mask] = segment_id
    segments.append({'id': segment_id, 'category_id': label.id,
                     'area': int(mask.sum()), 'iscrowd': int(crowd)})
  file_name = f'{image_id}_gtFine_panoptic.png'
  Image.fromarray(panoptic_format.id_to_rgb(segment_ids)).save(
      os.path.join(folder, file_name))
  return {'image_id': image_id, 'file_name': file_name, 'segments_info': segments}


def test_cityscapes_export_scores_the_same_in_cityscapesscripts(tmp_path):
  rng = np.random.default_rng(1)
  gt_folder = tmp_path / 'gt'
  gt_folder.mkdir()
  writer = submission.CityscapesPanopticWriter(str(tmp_path / 'results'), CITYSCAPES)
  ours = panoptic_quality.PanopticQuality(CITYSCAPES)
  gt_annotations = {}
  for i in range(6):
    gt, pred = random_panoptic.random_pair(rng, CITYSCAPES, shape=(32, 64))
    image_id = f'frankfurt_000000_{i:06d}'
    gt_annotations[image_id] = _write_cityscapes_gt(gt_folder, image_id, gt)
    writer.add(f'{image_id}_leftImg8bit'.encode(), pred)
    ours.update(gt, pred)
  json_path = writer.finalize()
  assert json_path.endswith('cityscapes_panoptic_val.json')
  with open(json_path) as f:
    exported = json.load(f)
  pairs = [(gt_annotations[a['image_id']], a) for a in exported['annotations']]
  assert len(pairs) == 6
  categories = {label.id: {'id': label.id, 'name': label.name,
                           'isthing': int(label.hasInstances)}
                for label in cs_labels.labels if not label.ignoreInEval}
  reference = cs_eval.pq_compute_single_core(
      0, pairs, str(gt_folder), os.path.splitext(json_path)[0], categories)
  assert sum(reference[c].tp for c in categories) > 0
  for label_id in categories:
    train_id = cs_labels.id2label[label_id].trainId
    stat = reference[label_id]
    assert (ours.tp[train_id], ours.fp[train_id], ours.fn[train_id]) == (
        stat.tp, stat.fp, stat.fn)
    assert ours.iou_sum[train_id] == pytest.approx(stat.iou, abs=1e-9)


def test_bad_input_raises(tmp_path):
  writer = submission.CocoPanopticWriter(str(tmp_path), COCO)
  with pytest.raises(ValueError, match='integer'):
    writer.add('frankfurt_000000_000001', np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match='unknown semantic'):
    writer.add(1, np.full((2, 2), 133 * COCO.label_divisor))
  writer.add(1, np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match='already added'):
    writer.add(b'1', np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match='label_divisor'):
    submission.CityscapesPanopticWriter(
        str(tmp_path), dataclasses.replace(CITYSCAPES, label_divisor=4096))


# A data set that is not built in: non-contiguous ids, more stuff than things.
CUSTOM = dataset_info_lib.from_categories(
    'custom', [{'id': i, 'name': f'c{i}', 'isthing': int(i in (3, 1001))}
               for i in (1001, 17, 3, 90, 240, 5)], 256)


def _write_coco_gt(folder, image_id, gt, info):
  """Ground truth as COCO panoptic stores it: crowd = a thing's instance 0."""
  segment_ids = np.zeros(gt.shape, np.int64)
  segments = []
  for index, panoptic_id in enumerate(np.unique(gt)):
    train_id, instance = divmod(int(panoptic_id), info.label_divisor)
    if train_id == info.ignore_label:
      continue
    mask = gt == panoptic_id
    segment_ids[mask] = index + 1
    segments.append({'id': index + 1, 'category_id': info.source_ids[train_id],
                     'area': int(mask.sum()),
                     'iscrowd': int(info.is_thing[train_id] and instance == 0)})
  file_name = f'{image_id:012d}.png'
  Image.fromarray(panoptic_format.id_to_rgb(segment_ids)).save(
      os.path.join(folder, file_name))
  return {'image_id': image_id, 'file_name': file_name, 'segments_info': segments}


@pytest.mark.parametrize('submission_format', submission.FORMATS)
def test_custom_submission_scores_the_same_as_ours_officially(tmp_path, submission_format):
  """Both layouts, read back and scored by the official code (panopticapi's
  `pq_compute`, as shipped in cityscapesscripts), give our PQ / SQ / RQ."""
  rng = np.random.default_rng(2)
  gt_folder = tmp_path / 'gt'
  gt_folder.mkdir()
  writer = submission.make_writer(submission_format, str(tmp_path / 'out'), CUSTOM)
  ours = panoptic_quality.PanopticQuality(CUSTOM)
  gt_annotations = {}
  for image_id in range(1, 9):
    gt, pred = random_panoptic.random_pair(rng, CUSTOM, shape=(32, 48))
    gt_annotations[image_id] = _write_coco_gt(gt_folder, image_id, gt, CUSTOM)
    writer.add(f'{image_id:012d}', pred)
    ours.update(gt, pred)
  json_path = writer.finalize()
  with open(json_path) as f:
    exported = json.load(f)
  assert [c['id'] for c in exported['categories']] == [3, 5, 17, 90, 240, 1001]
  categories = {c['id']: c for c in exported['categories']}
  pairs = [(gt_annotations[int(a['image_id'])], a) for a in exported['annotations']]
  assert len(pairs) == 8
  assert any(s['iscrowd'] for gt, _ in pairs for s in gt['segments_info'])
  stats = cs_eval.pq_compute_single_core(0, pairs, str(gt_folder),
                                         os.path.splitext(json_path)[0], categories)
  official = cs_eval.average_pq(stats, categories)
  results = ours.result()
  assert sum(stats[c].tp for c in categories) > 0
  for name, suffix in (('All', ''), ('Things', '_th'), ('Stuff', '_st')):
    for metric in ('pq', 'sq', 'rq'):
      assert results[metric + suffix] == pytest.approx(100 * official[name][metric],
                                                       abs=1e-9), (name, metric)
