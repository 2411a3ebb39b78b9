"""Tests of the streaming mIoU against a direct per-class computation."""
import numpy as np
import pytest

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import mean_iou

SYNTHETIC = dataset_info_lib.get_dataset_info('synthetic')
IGNORE = SYNTHETIC.ignore_label


def _random_semantic(rng, shape):
  """Train ids 0..7 with a small share of void (255)."""
  labels = rng.integers(0, 6, size=shape)  # Classes 6, 7 never appear.
  return np.where(rng.random(shape) < 0.1, IGNORE, labels)


def _direct_miou(gts, preds):
  """IoU_c = TP / (TP + FP + FN) over labelled pixels, one class at a time."""
  gt, pred = np.concatenate([g.ravel() for g in gts]), np.concatenate(
      [p.ravel() for p in preds])
  labelled = gt != IGNORE
  ious = []
  for c in range(SYNTHETIC.num_classes):
    tp = np.sum((gt == c) & (pred == c) & labelled)
    fp = np.sum((gt != c) & (pred == c) & labelled)
    fn = np.sum((gt == c) & (pred != c) & labelled)
    if tp + fp + fn:
      ious.append(tp / (tp + fp + fn))
  return 100 * np.mean(ious)


def test_streaming_matches_direct_computation():
  rng = np.random.default_rng(0)
  gts = [_random_semantic(rng, (16, 24)) for _ in range(5)]
  preds = [_random_semantic(rng, (16, 24)) for _ in range(5)]
  metric = mean_iou.MeanIoU(SYNTHETIC)
  for gt, pred in zip(gts, preds):
    metric.update(gt, pred)
  assert metric.result()['miou'] == pytest.approx(_direct_miou(gts, preds), abs=1e-9)
  at_once = mean_iou.MeanIoU(SYNTHETIC)
  at_once.update(np.stack(gts), np.stack(preds))
  np.testing.assert_array_equal(at_once.confusion, metric.confusion)


def test_hand_computed_with_void_prediction():
  gt = np.array([[0, 0, 1, IGNORE]])
  pred = np.array([[0, IGNORE, 0, 1]])
  result = mean_iou.MeanIoU(SYNTHETIC).result()
  assert result == {'miou': 0.0, 'iou_per_class': {}}
  metric = mean_iou.MeanIoU(SYNTHETIC)
  metric.update(gt, pred)
  # Disc: TP 1, FN 1 (predicted void), FP 1. Square: FN 1; its prediction on
  # the void pixel does not count.
  assert metric.result() == {'miou': pytest.approx(100 / 6),
                             'iou_per_class': {'disc': pytest.approx(100 / 3),
                                               'square': 0.0}}


@pytest.mark.parametrize('gt, pred, message', [
    (np.zeros((2, 2), int), np.zeros((2, 3), int), 'shape'),
    (np.zeros((2, 2), int), np.full((2, 2), 8), 'unknown semantic'),
    (np.full((2, 2), -1), np.zeros((2, 2), int), 'unknown semantic'),
    (np.zeros((2, 2), float), np.zeros((2, 2), int), 'integers'),
])
def test_bad_input_raises(gt, pred, message):
  with pytest.raises(ValueError, match=message):
    mean_iou.MeanIoU(SYNTHETIC).update(gt, pred)
