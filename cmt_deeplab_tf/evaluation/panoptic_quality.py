"""Panoptic quality (PQ, SQ, RQ) over a data set, streamed one image at a time.

Definitions (Kirillov et al., Panoptic Segmentation, CVPR 2019, Eqs. 1-2): for a
class c with matched pairs TP_c, unmatched predictions FP_c and unmatched ground
truth FN_c,

  PQ_c = sum_{(p, g) in TP_c} IoU(p, g) / (|TP_c| + |FP_c| / 2 + |FN_c| / 2)
       = SQ_c * RQ_c,   SQ_c = mean IoU over TP_c,
                        RQ_c = |TP_c| / (|TP_c| + |FP_c| / 2 + |FN_c| / 2).

PQ, SQ and RQ average these over the classes with |TP_c| + |FP_c| + |FN_c| > 0
(all classes, things only, stuff only). The per-class sums are accumulated over
the whole data set before dividing, so the memory does not grow with the number
of images.

Matching rules of the official evaluator (COCO panopticapi `evaluation.py`,
identical in cityscapesscripts' `evalPanopticSemanticLabeling.py`):
  * a predicted and a ground-truth segment of the same class match when their
    IoU > 0.5; the matching is then unique (paper, Theorem 1);
  * the union leaves out the predicted segment's pixels that are void in the
    ground truth;
  * crowd regions of the ground truth are never matched and are not false
    negatives;
  * an unmatched predicted segment is not a false positive when more than half
    of its area lies on ground-truth void or on the crowd region of its class.

Input conventions (`cmt_deeplab_tf.common`): panoptic maps in train ids,
`semantic * label_divisor + instance`; a pixel whose semantic id is the ignore
label is void (whatever its instance); a thing pixel of the ground truth with
instance 0 belongs to the crowd region of its class; every stuff class forms a
single segment per image (its instance ids are dropped), as COCO panoptic and
Cityscapes annotate stuff. A predicted thing pixel with instance 0 is an
ordinary segment.
"""
from typing import Dict, Tuple

import numpy as np

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib

_IOU_THRESHOLD = 0.5


def canonical_segment_ids(panoptic: np.ndarray,
                          info: dataset_info_lib.DatasetInfo,
                          name: str) -> np.ndarray:
  """Validates a panoptic map and gives every segment one id.

  Args:
    panoptic: integer [H, W] map, `semantic * label_divisor + instance`.
    info: the data set's class table.
    name: the argument's name, for error messages.

  Returns:
    int64 [H, W]: void pixels set to `ignore_label * label_divisor`, stuff pixels
    to `semantic * label_divisor`, thing pixels unchanged.

  Raises:
    ValueError: if the map is not 2-D and integer, or holds a negative id or a
      semantic id that is neither a train id nor the ignore label.
  """
  panoptic = np.asarray(panoptic)
  if panoptic.ndim != 2:
    raise ValueError(f'{name} must be a [height, width] map, got shape '
                     f'{panoptic.shape}.')
  if not np.issubdtype(panoptic.dtype, np.integer):
    raise ValueError(f'{name} must hold integers, got dtype {panoptic.dtype}.')
  panoptic = panoptic.astype(np.int64)
  divisor = info.label_divisor
  semantic = panoptic // divisor
  known = (panoptic >= 0) & ((semantic < info.num_classes) |
                             (semantic == info.ignore_label))
  if not np.all(known):
    bad = np.unique(semantic[~known])[:10].tolist()
    raise ValueError(
        f'{name} holds unknown semantic ids {bad} (label_divisor {divisor}); '
        f'expected train ids 0..{info.num_classes - 1} or the ignore label '
        f'{info.ignore_label}.')
  void = semantic == info.ignore_label
  stuff = ~_thing_lookup(info)[semantic] & ~void
  segment_ids = np.where(stuff, semantic * divisor, panoptic)
  return np.where(void, info.ignore_label * divisor, segment_ids)


def _thing_lookup(info: dataset_info_lib.DatasetInfo) -> np.ndarray:
  """Bool [max(C, ignore_label + 1)]: is_thing per train id, False elsewhere."""
  lookup = np.zeros(max(info.num_classes, info.ignore_label + 1), bool)
  lookup[:info.num_classes] = info.is_thing
  return lookup


def _compact(segment_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Unique ids, their areas, and each pixel's index into them (one bincount).

  Args:
    segment_ids: non-negative int64 [H, W].

  Returns:
    ids int64 [S] (sorted), areas int64 [S], index int64 [H * W].
  """
  flat = segment_ids.ravel()
  counts = np.bincount(flat)
  ids = np.flatnonzero(counts)
  lookup = np.zeros(counts.size, np.int64)
  lookup[ids] = np.arange(ids.size)
  return ids, counts[ids], lookup[flat]


def image_statistics(gt_segments: np.ndarray, pred_segments: np.ndarray,
                     info: dataset_info_lib.DatasetInfo
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Matches the segments of one image under the official rules.

  Args:
    gt_segments: int64 [H, W] from `canonical_segment_ids` of the ground truth.
    pred_segments: int64 [H, W] from `canonical_segment_ids` of the prediction.
    info: the data set's class table.

  Returns:
    (tp, fp, fn, iou_sum), each [C]: int64 counts and the float64 sum of the
    IoUs of the true positives.
  """
  divisor, num_classes = info.label_divisor, info.num_classes
  void_id = info.ignore_label * divisor
  gt_ids, gt_area, gt_index = _compact(gt_segments)
  pred_ids, pred_area, pred_index = _compact(pred_segments)
  # intersection[i, j]: pixels of ground-truth segment i and predicted segment j.
  intersection = np.bincount(
      gt_index * pred_ids.size + pred_index,
      minlength=gt_ids.size * pred_ids.size).reshape(gt_ids.size, pred_ids.size)

  gt_class, pred_class = gt_ids // divisor, pred_ids // divisor
  gt_void, pred_void = gt_ids == void_id, pred_ids == void_id
  gt_crowd = _thing_lookup(info)[gt_class] & (gt_ids % divisor == 0) & ~gt_void
  same_class = gt_class[:, None] == pred_class[None, :]
  pred_on_void = intersection[gt_void].sum(axis=0)

  candidate = same_class & ~(gt_void | gt_crowd)[:, None] & ~pred_void[None, :]
  union = gt_area[:, None] + pred_area[None, :] - intersection - pred_on_void
  iou = np.where(candidate, intersection / np.maximum(union, 1), 0.0)
  matched = iou > _IOU_THRESHOLD
  gt_rows, pred_cols = np.nonzero(matched)
  tp_class = gt_class[gt_rows]
  tp = np.bincount(tp_class, minlength=num_classes)
  iou_sum = np.bincount(tp_class, weights=iou[gt_rows, pred_cols],
                        minlength=num_classes)

  missed = ~(gt_void | gt_crowd | matched.any(axis=1))
  fn = np.bincount(gt_class[missed], minlength=num_classes)

  pred_on_crowd = (intersection * (same_class & gt_crowd[:, None])).sum(axis=0)
  mostly_ignored = 2 * (pred_on_void + pred_on_crowd) > pred_area
  spurious = ~(pred_void | matched.any(axis=0) | mostly_ignored)
  fp = np.bincount(pred_class[spurious], minlength=num_classes)
  return tp, fp, fn, iou_sum


class PanopticQuality:
  """Streaming PQ / SQ / RQ: feed one image at a time, read `result()` at the end.

  The state is four per-class arrays (TP, FP, FN counts and the TP IoU sum),
  so memory does not depend on the number of images.

  Usage:
    metric = PanopticQuality(dataset_info.get_dataset_info('coco'))
    for gt, pred in images:      # int [H, W] panoptic maps in train ids
      metric.update(gt, pred)
    results = metric.result()    # results['pq'], results['per_class'], ...
  """

  def __init__(self, info: dataset_info_lib.DatasetInfo):
    self._info = info
    self.reset()

  def reset(self) -> None:
    """Clears the accumulated statistics."""
    num_classes = self._info.num_classes
    self.tp = np.zeros(num_classes, np.int64)
    self.fp = np.zeros(num_classes, np.int64)
    self.fn = np.zeros(num_classes, np.int64)
    self.iou_sum = np.zeros(num_classes, np.float64)

  def update(self, gt_panoptic: np.ndarray, pred_panoptic: np.ndarray) -> None:
    """Accumulates one image.

    Args:
      gt_panoptic: integer [H, W] ground-truth panoptic map in train ids.
      pred_panoptic: integer [H, W] predicted panoptic map in train ids.

    Raises:
      ValueError: on shapes that differ, or ids outside the class table.
    """
    gt_panoptic, pred_panoptic = np.asarray(gt_panoptic), np.asarray(pred_panoptic)
    if gt_panoptic.shape != pred_panoptic.shape:
      raise ValueError(f'pred_panoptic has shape {pred_panoptic.shape}, but '
                       f'gt_panoptic has shape {gt_panoptic.shape}.')
    gt_segments = canonical_segment_ids(gt_panoptic, self._info, 'gt_panoptic')
    pred_segments = canonical_segment_ids(pred_panoptic, self._info,
                                          'pred_panoptic')
    tp, fp, fn, iou_sum = image_statistics(gt_segments, pred_segments, self._info)
    self.tp += tp
    self.fp += fp
    self.fn += fn
    self.iou_sum += iou_sum

  def result(self) -> Dict[str, object]:
    """PQ, SQ, RQ in percent (0..100), as in the papers' tables.

    Returns:
      A dict with 'pq', 'sq', 'rq' (all classes), 'pq_th', 'sq_th', 'rq_th'
      (things), 'pq_st', 'sq_st', 'rq_st' (stuff); 'n', 'n_th', 'n_st', the
      number of classes averaged (those with TP + FP + FN > 0; an average over
      no class is 0); and 'per_class', mapping the name of every averaged class
      to a dict of its 'pq', 'sq', 'rq' (percent) and 'tp', 'fp', 'fn' counts.
    """
    denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
    counted = denominator > 0
    safe = np.where(counted, denominator, 1.0)
    pq = 100.0 * self.iou_sum / safe
    sq = 100.0 * self.iou_sum / np.maximum(self.tp, 1)
    rq = 100.0 * self.tp / safe
    is_thing = np.asarray(self._info.is_thing, bool)
    results = {}
    for suffix, subset in (('', np.ones_like(is_thing)), ('_th', is_thing),
                           ('_st', ~is_thing)):
      selected = counted & subset
      for metric_name, per_class in (('pq', pq), ('sq', sq), ('rq', rq)):
        value = per_class[selected].mean() if selected.any() else 0.0
        results[metric_name + suffix] = float(value)
      results['n' + suffix] = int(selected.sum())
    results['per_class'] = {
        self._info.class_names[c]: {
            'pq': float(pq[c]), 'sq': float(sq[c]), 'rq': float(rq[c]),
            'tp': int(self.tp[c]), 'fp': int(self.fp[c]), 'fn': int(self.fn[c])}
        for c in np.flatnonzero(counted)}
    return results
