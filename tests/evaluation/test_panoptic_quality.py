"""Tests of the streaming PQ evaluator against two independent references.

(a) cityscapesscripts' `evalPanopticSemanticLabeling` (a copy of COCO
panopticapi's rules, crowd included), driven on PNG + JSON files it reads itself;
(b) tf-models-official's numpy `PanopticQuality`, which has no crowd regions of
a class (a thing with instance 0 is an ordinary segment there), so it is only
compared on ground truths without crowd.
"""
import os

import numpy as np
import pytest
from PIL import Image

from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_eval
from official.vision.evaluation import panoptic_quality as tfm_pq

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import panoptic_quality
from tests.evaluation import random_panoptic

# tf-models-official divides by zero before masking the result.
pytestmark = pytest.mark.filterwarnings('ignore::RuntimeWarning')

SYNTHETIC = dataset_info_lib.get_dataset_info('synthetic')
CITYSCAPES = dataset_info_lib.get_dataset_info('cityscapes')
COCO = dataset_info_lib.get_dataset_info('coco')
NUM_RANDOM_CASES = 200


def _evaluate(info, pairs):
  metric = panoptic_quality.PanopticQuality(info)
  for gt, pred in pairs:
    metric.update(gt, pred)
  return metric


def _random_cases(seed, info, crowd):
  """NUM_RANDOM_CASES lists of 1-3 (gt, pred) pairs."""
  rng = np.random.default_rng(seed)
  return [[random_panoptic.random_pair(rng, info, crowd=crowd)
           for _ in range(rng.integers(1, 4))] for _ in range(NUM_RANDOM_CASES)]


# ---------------------------------------------------------------- references.


def _write_coco_format(folder, name, panoptic, info, is_gt):
  """Writes a map as a COCO panoptic PNG; returns its annotation dict."""
  void = info.ignore_label * info.label_divisor
  panoptic = panoptic.astype(np.int64)
  segment_ids = np.where(panoptic == void, 0, panoptic + 1)  # 0 is VOID there.
  rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256,
                  segment_ids // 65536], axis=-1).astype(np.uint8)
  Image.fromarray(rgb).save(os.path.join(folder, name))
  segments = []
  for segment_id, area in zip(*np.unique(segment_ids, return_counts=True)):
    if segment_id == 0:
      continue
    semantic, instance = divmod(int(segment_id) - 1, info.label_divisor)
    crowd = is_gt and info.is_thing[semantic] and instance == 0
    segments.append({'id': int(segment_id), 'category_id': semantic,
                     'area': int(area), 'iscrowd': int(crowd)})
  return {'image_id': name, 'file_name': name, 'segments_info': segments}


def _cityscapes_reference(tmp_path, info, pairs):
  """Runs cityscapesscripts' per-image PQ code on `pairs`; returns its PQStat."""
  gt_folder, pred_folder = tmp_path / 'gt', tmp_path / 'pred'
  gt_folder.mkdir(exist_ok=True)
  pred_folder.mkdir(exist_ok=True)
  annotation_pairs = []
  for i, (gt, pred) in enumerate(pairs):
    name = f'{i}.png'
    annotation_pairs.append(
        (_write_coco_format(gt_folder, name, gt, info, is_gt=True),
         _write_coco_format(pred_folder, name, pred, info, is_gt=False)))
  categories = {c: {'id': c, 'name': info.class_names[c],
                    'isthing': int(info.is_thing[c])}
                for c in range(info.num_classes)}
  return cs_eval.pq_compute_single_core(
      0, annotation_pairs, str(gt_folder), str(pred_folder), categories), categories


def _assert_matches_cityscapes(ours, reference, categories):
  for c in categories:
    stat = reference[c]
    assert (ours.tp[c], ours.fp[c], ours.fn[c]) == (stat.tp, stat.fp, stat.fn), c
    assert ours.iou_sum[c] == pytest.approx(stat.iou, abs=1e-9), c
  result = ours.result()
  for suffix, isthing in (('', None), ('_th', True), ('_st', False)):
    if result['n' + suffix] == 0:
      continue  # The reference divides by zero here.
    expected, _ = reference.pq_average(categories, isthing)
    assert result['n' + suffix] == expected['n']
    for key in ('pq', 'sq', 'rq'):
      assert result[key + suffix] == pytest.approx(100 * expected[key], abs=1e-6)


def _tfm_reference(info, pairs):
  """tf-models-official's numpy PanopticQuality, void as its ignored category.

  Void becomes category C (not 255): the reference multiplies uint32 ids by the
  offset, which overflows for 255 * 1000 * 256000 (Cityscapes' divisor).
  """
  num_classes, divisor = info.num_classes, info.label_divisor
  reference = tfm_pq.PanopticQuality(
      num_categories=num_classes + 1, ignored_label=num_classes,
      max_instances_per_category=divisor, offset=(num_classes + 1) * divisor)

  def masks(panoptic):
    category = np.minimum(panoptic // divisor, num_classes)
    return {'category_mask': category, 'instance_mask': panoptic % divisor}

  for gt, pred in pairs:
    reference.compare_and_accumulate(masks(gt), masks(pred))
  return reference


def _assert_matches_tfm(ours, reference, info):
  c = info.num_classes
  np.testing.assert_array_equal(ours.tp, reference.tp_per_class[:c])
  np.testing.assert_array_equal(ours.fp, reference.fp_per_class[:c])
  np.testing.assert_array_equal(ours.fn, reference.fn_per_class[:c])
  np.testing.assert_allclose(ours.iou_sum, reference.iou_per_class[:c], atol=1e-9)
  expected = reference.result(np.append(info.is_thing, False))
  result = ours.result()
  for suffix, name in (('', 'All'), ('_th', 'Things'), ('_st', 'Stuff')):
    assert result['n' + suffix] == expected[f'{name}_num_categories']
    for key in ('pq', 'sq', 'rq'):
      assert result[key + suffix] == pytest.approx(
          100 * expected[f'{name}_{key}'], abs=1e-6)


# ------------------------------------------------------------ random cases.


def test_agrees_with_cityscapesscripts_on_random_cases(tmp_path):
  for i, pairs in enumerate(_random_cases(0, SYNTHETIC, crowd=True)):
    case_dir = tmp_path / str(i)
    case_dir.mkdir()
    reference, categories = _cityscapes_reference(case_dir, SYNTHETIC, pairs)
    _assert_matches_cityscapes(_evaluate(SYNTHETIC, pairs), reference, categories)


def test_agrees_with_tf_models_official_on_random_cases():
  for pairs in _random_cases(1, SYNTHETIC, crowd=False):
    _assert_matches_tfm(_evaluate(SYNTHETIC, pairs),
                        _tfm_reference(SYNTHETIC, pairs), SYNTHETIC)


@pytest.mark.parametrize('info', [CITYSCAPES, COCO], ids=lambda info: info.name)
def test_agrees_with_both_on_real_class_tables(info, tmp_path):
  rng = np.random.default_rng(2)
  pairs = [random_panoptic.random_pair(rng, info, (96, 128), crowd=False)
           for _ in range(20)]
  ours = _evaluate(info, pairs)
  _assert_matches_tfm(ours, _tfm_reference(info, pairs), info)
  reference, categories = _cityscapes_reference(tmp_path, info, pairs)
  _assert_matches_cityscapes(ours, reference, categories)
  assert ours.tp.sum() > 20


# -------------------------------------------------------- adversarial cases.

_DIV = SYNTHETIC.label_divisor
_VOID = SYNTHETIC.ignore_label * _DIV
_DISC, _SQUARE = 0, 1  # Thing train ids of the synthetic set.
_SKY, _GRASS = 4, 5    # Stuff train ids.


def _adversarial_cases():
  """Named (gt, pred, has_crowd) triples of 8x8 maps."""
  rng = np.random.default_rng(3)
  sky = np.full((8, 8), _SKY * _DIV)
  with_discs = sky.copy()
  with_discs[:4, :4] = _DISC * _DIV + 1
  with_discs[4:, 4:] = _DISC * _DIV + 2
  crowd = sky.copy()
  crowd[2:6, 2:6] = _DISC * _DIV  # Crowd region of discs.
  on_crowd = sky.copy()
  on_crowd[2:6, 2:5] = _DISC * _DIV + 7
  on_crowd_other_class = np.where(on_crowd == _DISC * _DIV + 7, _SQUARE * _DIV + 1,
                                  on_crowd)
  tiny = sky.copy()
  tiny[0, 0], tiny[7, 7] = _DISC * _DIV + 1, _SQUARE * _DIV + 1
  tiny_pred = sky.copy()
  tiny_pred[0, 0], tiny_pred[3, 3] = _DISC * _DIV + 5, _GRASS * _DIV
  random_gt, random_pred = random_panoptic.random_pair(rng, SYNTHETIC, (8, 8))
  return {
      'empty prediction': (with_discs, np.full((8, 8), _VOID), False),
      'all void': (np.full((8, 8), _VOID), with_discs, False),
      'all void both': (np.full((8, 8), _VOID), np.full((8, 8), _VOID), False),
      'crowd, same class on it': (crowd, on_crowd, True),
      'crowd, other class on it': (crowd, on_crowd_other_class, True),
      'tiny segments': (tiny, tiny_pred, False),
      'unmatched classes': (with_discs, np.where(with_discs == _SKY * _DIV,
                                                 _GRASS * _DIV, with_discs), False),
      'one class only': (sky, sky, False),
      'random 8x8': (random_gt, random_pred, True),
  }


@pytest.mark.parametrize('name', sorted(_adversarial_cases()))
def test_adversarial_cases_agree_with_references(name, tmp_path):
  gt, pred, has_crowd = _adversarial_cases()[name]
  pairs = [(gt, pred)]
  ours = _evaluate(SYNTHETIC, pairs)
  reference, categories = _cityscapes_reference(tmp_path, SYNTHETIC, pairs)
  _assert_matches_cityscapes(ours, reference, categories)
  if not has_crowd:
    _assert_matches_tfm(ours, _tfm_reference(SYNTHETIC, pairs), SYNTHETIC)


# ------------------------------------------------ hand-computed expectations.


def test_hand_computed_iou_threshold_and_void_in_union():
  gt = np.full((4, 8), _SKY * _DIV)
  gt[:, 6:] = _VOID
  gt[0, :4] = _DISC * _DIV + 1      # 4 px.
  gt[2, :4] = _DISC * _DIV + 2      # 4 px.
  pred = np.full((4, 8), _SKY * _DIV)
  pred[0, :2] = _DISC * _DIV + 1    # IoU 2 / 4 = 0.5 exactly: no match.
  pred[2, :] = _DISC * _DIV + 2     # 8 px, 2 on void: IoU 4 / (4 + 8 - 4 - 2).
  result = _evaluate(SYNTHETIC, [(gt, pred)]).result()
  disc = result['per_class']['disc']
  assert (disc['tp'], disc['fp'], disc['fn']) == (1, 1, 2 - 1)
  assert disc['sq'] == pytest.approx(100 * 4 / 6)
  assert disc['pq'] == pytest.approx(100 * (4 / 6) / (1 + 0.5 + 0.5))
  # Sky: gt 32 - 8 void - 8 disc = 16 px; pred 32 - 10 disc = 22 px, 6 of
  # them on void; 14 px in common.
  sky = result['per_class']['sky']
  assert sky['sq'] == pytest.approx(100 * 14 / (16 + 22 - 14 - 6))
  assert result['pq'] == pytest.approx((disc['pq'] + sky['pq']) / 2)
  assert result['pq_th'] == pytest.approx(disc['pq'])
  assert result['pq_st'] == pytest.approx(sky['pq'])


def test_unmatched_prediction_mostly_on_void_is_not_false_positive():
  gt = np.full((2, 4), _SKY * _DIV)
  gt[:, :2] = _VOID
  pred = gt.copy()
  pred[0, :3] = _DISC * _DIV + 1    # 2 of its 3 px on void.
  pred[1, 1:4] = _SQUARE * _DIV + 1  # 1 of its 3 px on void: a false positive.
  metric = _evaluate(SYNTHETIC, [(gt, pred)])
  assert metric.fp[_DISC] == 0
  assert metric.fp[_SQUARE] == 1


def test_stuff_instances_form_one_segment():
  rng = np.random.default_rng(4)
  gt, pred = random_panoptic.random_pair(rng, SYNTHETIC)
  split = pred.copy()
  is_stuff = ~np.asarray(SYNTHETIC.is_thing)[np.minimum(pred // _DIV, 7)]
  is_stuff &= pred != _VOID
  split[is_stuff] += rng.integers(0, 5, size=is_stuff.sum())
  merged, separate = _evaluate(SYNTHETIC, [(gt, pred)]), _evaluate(
      SYNTHETIC, [(gt, split)])
  for field in ('tp', 'fp', 'fn', 'iou_sum'):
    np.testing.assert_array_equal(getattr(merged, field), getattr(separate, field))


def test_perfect_prediction_scores_100_and_no_class_scores_0():
  rng = np.random.default_rng(5)
  gt, _ = random_panoptic.random_pair(rng, SYNTHETIC, crowd=False)
  result = _evaluate(SYNTHETIC, [(gt, gt)]).result()
  assert (result['pq'], result['sq'], result['rq']) == (100.0, 100.0, 100.0)
  empty = panoptic_quality.PanopticQuality(SYNTHETIC).result()
  assert (empty['pq'], empty['n'], empty['per_class']) == (0.0, 0, {})


def test_streaming_equals_sum_of_images_in_any_order():
  pairs = _random_cases(6, SYNTHETIC, crowd=True)[0] * 2
  forward = _evaluate(SYNTHETIC, pairs)
  backward = _evaluate(SYNTHETIC, pairs[::-1])
  per_image = [_evaluate(SYNTHETIC, [pair]) for pair in pairs]
  for field in ('tp', 'fp', 'fn', 'iou_sum'):
    total = sum(getattr(m, field) for m in per_image)
    np.testing.assert_allclose(getattr(forward, field), total, atol=1e-12)
    np.testing.assert_allclose(getattr(backward, field), total, atol=1e-12)
  forward.reset()
  assert forward.tp.sum() == forward.fp.sum() == forward.fn.sum() == 0


# ------------------------------------------------------------- bad input.


@pytest.mark.parametrize('gt, pred, message', [
    (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), 'shape'),
    (np.zeros((4, 4), np.int32), np.full((4, 4), 8 * _DIV), 'unknown semantic'),
    (np.full((4, 4), -1), np.zeros((4, 4), np.int32), 'unknown semantic'),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32), 'integers'),
    (np.zeros((2, 4, 4), np.int32), np.zeros((2, 4, 4), np.int32), 'height'),
])
def test_bad_input_raises(gt, pred, message):
  with pytest.raises(ValueError, match=message):
    panoptic_quality.PanopticQuality(SYNTHETIC).update(gt, pred)
