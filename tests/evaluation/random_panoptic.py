"""Random ground-truth / prediction pairs of panoptic maps for evaluator tests.

The ground truth is a few stuff bands overlaid with thing rectangles (some of
them crowd, instance 0), void rectangles and void salt. The prediction jitters,
relabels, splits or drops the ground-truth rectangles and adds spurious and
one-pixel segments, so IoUs spread across the 0.5 threshold.
"""
from typing import Tuple

import numpy as np

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib


def _rectangle(rng, height, width, max_side):
  y0, x0 = rng.integers(0, height), rng.integers(0, width)
  h, w = rng.integers(1, max_side + 1, size=2)
  return y0, x0, min(y0 + h, height), min(x0 + w, width)


def _jitter(rng, box, height, width, amount):
  y0, x0, y1, x1 = (v + int(d) for v, d in zip(box, rng.integers(-amount, amount + 1, 4)))
  y0, x0 = min(max(y0, 0), height - 1), min(max(x0, 0), width - 1)
  return y0, x0, min(max(y1, y0 + 1), height), min(max(x1, x0 + 1), width)


def random_pair(rng: np.random.Generator, info: dataset_info_lib.DatasetInfo,
                shape: Tuple[int, int] = (32, 48), crowd: bool = True
               ) -> Tuple[np.ndarray, np.ndarray]:
  """One (gt, pred) pair of int32 [H, W] panoptic maps in train ids.

  Stuff pixels have instance 0 in both maps. With `crowd=False` no thing pixel
  of the ground truth has instance 0.
  """
  height, width = shape
  divisor, void = info.label_divisor, info.ignore_label * info.label_divisor
  stuff, things = np.array(info.stuff_ids), np.array(info.thing_ids)
  gt = np.empty(shape, np.int64)
  pred = np.empty(shape, np.int64)
  cuts = np.sort(rng.integers(0, width, size=rng.integers(0, 4)))
  pred_cuts = np.clip(cuts + rng.integers(-3, 4, size=cuts.size), 0, width)
  for gt_band, pred_band in zip(zip(np.r_[0, cuts], np.r_[cuts, width]),
                                zip(np.r_[0, pred_cuts], np.r_[pred_cuts, width])):
    label = rng.choice(stuff)
    gt[:, slice(*gt_band)] = label * divisor
    pred_label = label if rng.random() < 0.8 else rng.choice(stuff)
    pred[:, slice(*pred_band)] = pred_label * divisor
  next_instance = {c: 1 for c in things}
  for _ in range(rng.integers(0, 8)):
    box = _rectangle(rng, height, width, max_side=16)
    cls = rng.choice(things)
    if crowd and rng.random() < 0.15:
      instance = 0
    else:
      instance = next_instance[cls]
      next_instance[cls] += 1
    gt[box[0]:box[2], box[1]:box[3]] = cls * divisor + instance
    fate = rng.random()
    if fate < 0.1:
      continue  # Missed by the prediction.
    pred_cls = cls if fate < 0.85 else rng.choice(things)
    pred_instance = rng.integers(0, 4) if fate < 0.3 else instance
    pred_box = _jitter(rng, box, height, width, amount=rng.integers(0, 4))
    pred[pred_box[0]:pred_box[2], pred_box[1]:pred_box[3]] = (
        pred_cls * divisor + pred_instance)
  for _ in range(rng.integers(0, 3)):  # Spurious predictions.
    box = _rectangle(rng, height, width, max_side=10)
    pred[box[0]:box[2], box[1]:box[3]] = (
        rng.choice(things) * divisor + rng.integers(0, 6))
  for _ in range(rng.integers(0, 3)):  # One-pixel segments of any class.
    y, x = rng.integers(0, height), rng.integers(0, width)
    cls = rng.integers(0, info.num_classes)
    pred[y, x] = cls * divisor + (rng.integers(1, 9) if info.is_thing[cls] else 0)
  for _ in range(rng.integers(0, 3)):  # Void regions of the ground truth.
    box = _rectangle(rng, height, width, max_side=12)
    gt[box[0]:box[2], box[1]:box[3]] = void
  gt[rng.random(shape) < rng.choice([0.0, 0.05])] = void
  pred[rng.random(shape) < rng.choice([0.0, 0.02])] = void
  return gt.astype(np.int32), pred.astype(np.int32)
