"""Tests of the eval-loop evaluator: batching, cropping to VALID_SIZE, merging."""
import numpy as np
import pytest

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import mean_iou
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.evaluation import panoptic_quality
from tests.evaluation import random_panoptic

SYNTHETIC = dataset_info_lib.get_dataset_info('synthetic')
DIVISOR = SYNTHETIC.label_divisor


def _batch(seed, size):
  rng = np.random.default_rng(seed)
  gts, preds = zip(*[random_panoptic.random_pair(rng, SYNTHETIC) for _ in range(size)])
  gt, pred = np.stack(gts), np.stack(preds)
  groundtruth = {common.PANOPTIC: gt, common.SEMANTIC: gt // DIVISOR}
  prediction = {common.PANOPTIC_PRED: pred, common.SEMANTIC_PRED: pred // DIVISOR}
  return groundtruth, prediction


def test_batch_equals_separate_metrics_per_image():
  groundtruth, prediction = _batch(0, 3)
  evaluator = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  evaluator.update(groundtruth, prediction)
  pq = panoptic_quality.PanopticQuality(SYNTHETIC)
  miou = mean_iou.MeanIoU(SYNTHETIC)
  for i in range(3):
    pq.update(groundtruth[common.PANOPTIC][i], prediction[common.PANOPTIC_PRED][i])
    miou.update(groundtruth[common.SEMANTIC][i], prediction[common.SEMANTIC_PRED][i])
  expected = pq.result()
  expected.update(miou.result())
  results = evaluator.result()
  assert {k: v for k, v in results.items()
          if k not in ('num_images', 'pq_ci_low', 'pq_ci_high')} == expected
  assert results['num_images'] == 3
  assert 0 < expected['pq'] < 100 and 0 < expected['miou'] < 100


def test_single_image_without_batch_dimension():
  groundtruth, prediction = _batch(1, 1)
  batched = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  batched.update(groundtruth, prediction)
  single = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  single.update({k: v[0] for k, v in groundtruth.items()},
                {k: v[0] for k, v in prediction.items()})
  assert single.result() == batched.result()


def test_valid_size_crops_away_the_padding():
  groundtruth, prediction = _batch(2, 2)
  cropped = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  cropped.update({k: v[:, :20, :30] for k, v in groundtruth.items()},
                 {k: v[:, :20, :30] for k, v in prediction.items()})
  # Padding holds a spurious prediction that would be a false positive.
  padded_gt = {k: v.copy() for k, v in groundtruth.items()}
  padded_pred = {k: v.copy() for k, v in prediction.items()}
  padded_pred[common.PANOPTIC_PRED][:, 20:, :] = 0 * DIVISOR + 99
  padded_pred[common.SEMANTIC_PRED][:, 20:, :] = 0
  padded_gt[common.VALID_SIZE] = np.array([[20, 30], [20, 30]])
  padded = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  padded.update(padded_gt, padded_pred)
  assert padded.result() == cropped.result()
  padded.reset()
  assert padded.result()['n'] == 0


def test_missing_key_and_batch_mismatch_raise():
  groundtruth, prediction = _batch(3, 2)
  evaluator = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  with pytest.raises(ValueError, match=common.SEMANTIC_PRED):
    evaluator.update(groundtruth, {common.PANOPTIC_PRED: prediction[common.PANOPTIC_PRED]})
  prediction[common.PANOPTIC_PRED] = prediction[common.PANOPTIC_PRED][:1]
  with pytest.raises(ValueError, match='batch size'):
    evaluator.update(groundtruth, prediction)
