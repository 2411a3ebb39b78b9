"""Bootstrap interval of PQ over the evaluated images, from per-image statistics.

A resample draws as many images as were evaluated, with replacement. Its PQ is
computed as the evaluator computes it (`panoptic_quality.class_average`), from
the per-class TP, FP, FN and IoU sums of its images; an image drawn k times
counts k times. The interval is the (2.5, 97.5) percentile pair of the resampled
PQs (numpy's linear interpolation). The draws are seeded: the same predictions
always give the same interval.

Cost: one [R, N] x [N, 4C] matrix product for R resamples of N images and C
classes: under a second for 1000 resamples of COCO val (5000 images, 133
classes; `scripts/bench_evaluator.py`), against minutes for the evaluation itself.
"""
from typing import Tuple

import numpy as np

from cmt_deeplab_tf.evaluation import panoptic_quality

NUM_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


def resample_indices(num_images: int, num_resamples: int = NUM_RESAMPLES,
                     seed: int = SEED) -> np.ndarray:
  """int64 [num_resamples, num_images]: the images each resample draws."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, num_images, size=(num_resamples, num_images))


def pq_interval(per_image: np.ndarray, num_resamples: int = NUM_RESAMPLES,
                seed: int = SEED, level: float = LEVEL) -> Tuple[float, float]:
  """The bootstrap interval of PQ (percent).

  Args:
    per_image: float64 [N, 4, C], per image and class the TP, FP, FN counts and
      the IoU sum of the true positives
      (`panoptic_quality.PanopticQuality.per_image_statistics`).
    num_resamples: resamples drawn.
    seed: seed of the draws (`resample_indices`).
    level: the interval's coverage.

  Returns:
    (low, high); (0, 0) for no image, as PQ over no class is 0.
  """
  num_images = per_image.shape[0]
  if num_images == 0:
    return 0.0, 0.0
  indices = resample_indices(num_images, num_resamples, seed)
  rows = np.arange(num_resamples)[:, None] * num_images
  counts = np.bincount((rows + indices).ravel(), minlength=num_resamples * num_images)
  counts = counts.reshape(num_resamples, num_images).astype(np.float64)
  sums = (counts @ per_image.reshape(num_images, -1)).reshape(
      (num_resamples,) + per_image.shape[1:])
  pq, _, _, counted = panoptic_quality.per_class_scores(*np.moveaxis(sums, 1, 0))
  resampled = panoptic_quality.class_average(pq, counted)
  tail = 50.0 * (1.0 - level)
  low, high = np.percentile(resampled, [tail, 100.0 - tail])
  return float(low), float(high)
