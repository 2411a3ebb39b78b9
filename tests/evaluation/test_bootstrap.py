"""Tests of the bootstrap interval of PQ against a direct resampling of the images."""
import numpy as np
import pytest

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import bootstrap
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.evaluation import panoptic_quality
from tests.evaluation import random_panoptic

SYNTHETIC = dataset_info_lib.get_dataset_info('synthetic')
DIVISOR = SYNTHETIC.label_divisor


def _pairs(seed, count, shape=(16, 24)):
  rng = np.random.default_rng(seed)
  return [random_panoptic.random_pair(rng, SYNTHETIC, shape) for _ in range(count)]


def _evaluator(pairs):
  evaluator = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  for gt, pred in pairs:
    evaluator.update({common.PANOPTIC: gt, common.SEMANTIC: gt // DIVISOR},
                     {common.PANOPTIC_PRED: pred, common.SEMANTIC_PRED: pred // DIVISOR})
  return evaluator


def _direct_percentiles(pairs, indices):
  """Each resample's PQ by a fresh evaluator on the resampled image list."""
  pqs = []
  for resample in indices:
    metric = panoptic_quality.PanopticQuality(SYNTHETIC)
    for i in resample:
      metric.update(*pairs[i])
    pqs.append(metric.result()['pq'])
  return np.percentile(pqs, [2.5, 97.5])


def test_eval_result_carries_the_interval_of_a_direct_resampling():
  pairs = _pairs(0, 4, shape=(8, 12))
  results = _evaluator(pairs).result()
  indices = bootstrap.resample_indices(4, bootstrap.NUM_RESAMPLES, bootstrap.SEED)
  assert indices.shape == (1000, 4)
  expected = _direct_percentiles(pairs, indices)
  # Same resamples; only the summation order of the IoU sums differs.
  np.testing.assert_allclose([results['pq_ci_low'], results['pq_ci_high']], expected,
                             rtol=1e-12)
  assert results['num_images'] == 4
  assert results['pq_ci_low'] < results['pq'] < results['pq_ci_high']


@pytest.mark.parametrize('seed, num_resamples', [(1, 50), (2, 100)])
def test_interval_with_other_seeds_and_resample_counts(seed, num_resamples):
  pairs = _pairs(seed, 9)
  metric = panoptic_quality.PanopticQuality(SYNTHETIC)
  for gt, pred in pairs:
    metric.update(gt, pred)
  interval = bootstrap.pq_interval(metric.per_image_statistics(), num_resamples, seed)
  indices = bootstrap.resample_indices(9, num_resamples, seed)
  np.testing.assert_allclose(interval, _direct_percentiles(pairs, indices), rtol=1e-12)


def test_interval_is_seeded_and_narrows_with_more_images():
  few, many = _evaluator(_pairs(3, 4)), _evaluator(_pairs(3, 4) * 16)
  assert few.result()['pq_ci_low'] == few.result()['pq_ci_low']
  # Repeating the same images keeps PQ and shrinks the spread of the resamples.
  assert few.result()['pq'] == pytest.approx(many.result()['pq'], abs=1e-9)
  width = lambda r: r['pq_ci_high'] - r['pq_ci_low']
  assert 0 < width(many.result()) < 0.5 * width(few.result())


def test_identical_images_give_a_zero_width_interval_and_no_image_gives_zero():
  gt, _ = random_panoptic.random_pair(np.random.default_rng(4), SYNTHETIC, crowd=False)
  results = _evaluator([(gt, gt)] * 3).result()
  assert results['pq_ci_low'] == results['pq_ci_high'] == 100.0
  empty = panoptic_evaluator.PanopticEvaluator(SYNTHETIC).result()
  assert (empty['pq_ci_low'], empty['pq_ci_high'], empty['num_images']) == (0.0, 0.0, 0)
