"""Panoptic quality (PQ, SQ, RQ) over a data set, streamed one image at a time.

Definitions (Kirillov et al., Panoptic Segmentation, CVPR 2019, Eqs. 1-2): for a
class c with matched pairs TP_c, unmatched predictions FP_c and unmatched ground
truth FN_c,

  PQ_c = sum_{(p, g) in TP_c} IoU(p, g) / (|TP_c| + |FP_c| / 2 + |FN_c| / 2)
       = SQ_c * RQ_c,   SQ_c = mean IoU over TP_c,
                        RQ_c = |TP_c| / (|TP_c| + |FP_c| / 2 + |FN_c| / 2).

PQ, SQ and RQ average these over the classes with |TP_c| + |FP_c| + |FN_c| > 0
(all classes, things only, stuff only). The per-class sums are accumulated over
the whole data set before dividing. The per-image sums are kept too (4C numbers
per image, e.g. 2 MB for COCO val) for the bootstrap interval (`bootstrap`).

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
from typing import Dict, NamedTuple, Tuple

import numpy as np

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib

_IOU_THRESHOLD = 0.5


class Segments(NamedTuple):
  """The segments of one panoptic map.

  Attributes:
    ids: int64 [S], sorted segment ids: `semantic * label_divisor + instance`,
      with void as `ignore_label * label_divisor` and stuff as
      `semantic * label_divisor`.
    areas: int64 [S], pixels per segment.
    index: int64 [H, W], every pixel's index into `ids`.
  """
  ids: np.ndarray
  areas: np.ndarray
  index: np.ndarray


def find_segments(panoptic: np.ndarray, info: dataset_info_lib.DatasetInfo,
                  name: str) -> Segments:
  """Validates a panoptic map and splits it into segments.

  One bincount over the pixels; the rules (void, one stuff segment per class)
  are applied to the few distinct ids, not to every pixel.

  Args:
    panoptic: integer [H, W] map, `semantic * label_divisor + instance`.
    info: the data set's class table.
    name: the argument's name, for error messages.

  Returns:
    The map's `Segments`.

  Raises:
    ValueError: if the map is not a non-empty 2-D integer array, or holds a
      negative id or a semantic id that is neither a train id nor the ignore
      label.
  """
  panoptic = np.asarray(panoptic)
  if panoptic.ndim != 2 or panoptic.size == 0:
    raise ValueError(f'{name} must be a non-empty [height, width] map, got '
                     f'shape {panoptic.shape}.')
  if not np.issubdtype(panoptic.dtype, np.integer):
    raise ValueError(f'{name} must hold integers, got dtype {panoptic.dtype}.')
  flat = panoptic.ravel().astype(np.int64)
  divisor = info.label_divisor
  largest_known = (max(info.num_classes - 1, info.ignore_label) + 1) * divisor - 1
  if flat.min() < 0 or flat.max() > largest_known:
    out_of_range = (flat < 0) | (flat > largest_known)
    raise _unknown_semantic_error(name, flat[out_of_range] // divisor, info)
  counts = np.bincount(flat)
  raw_ids = np.flatnonzero(counts)
  semantic = raw_ids // divisor
  known = (semantic < info.num_classes) | (semantic == info.ignore_label)
  if not known.all():
    raise _unknown_semantic_error(name, semantic[~known], info)
  void = semantic == info.ignore_label
  stuff = ~_thing_lookup(info)[semantic] & ~void
  canonical = np.where(stuff, semantic * divisor, raw_ids)
  canonical = np.where(void, info.ignore_label * divisor, canonical)
  ids, merged = np.unique(canonical, return_inverse=True)
  areas = np.bincount(merged, weights=counts[raw_ids]).astype(np.int64)
  lookup = np.zeros(counts.size, np.int64)
  lookup[raw_ids] = merged
  return Segments(ids, areas, lookup[flat].reshape(panoptic.shape))


def _unknown_semantic_error(name: str, semantic: np.ndarray,
                            info: dataset_info_lib.DatasetInfo) -> ValueError:
  return ValueError(
      f'{name} holds unknown semantic ids {np.unique(semantic)[:10].tolist()} '
      f'(label_divisor {info.label_divisor}); expected train ids '
      f'0..{info.num_classes - 1} or the ignore label {info.ignore_label}.')


def _thing_lookup(info: dataset_info_lib.DatasetInfo) -> np.ndarray:
  """Bool [max(C, ignore_label + 1)]: is_thing per train id, False elsewhere."""
  lookup = np.zeros(max(info.num_classes, info.ignore_label + 1), bool)
  lookup[:info.num_classes] = info.is_thing
  return lookup


def image_statistics(gt: Segments, pred: Segments,
                     info: dataset_info_lib.DatasetInfo
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Matches the segments of one image under the official rules.

  Args:
    gt: the ground truth's segments (`find_segments`).
    pred: the prediction's segments, of the same image size.
    info: the data set's class table.

  Returns:
    (tp, fp, fn, iou_sum), each [C]: int64 counts and the float64 sum of the
    IoUs of the true positives.
  """
  divisor, num_classes = info.label_divisor, info.num_classes
  void_id = info.ignore_label * divisor
  gt_ids, gt_area = gt.ids, gt.areas
  pred_ids, pred_area = pred.ids, pred.areas
  # intersection[i, j]: pixels of ground-truth segment i and predicted segment j.
  intersection = np.bincount(
      (gt.index * pred_ids.size + pred.index).ravel(),
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


def per_class_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                     iou_sum: np.ndarray):
  """Per-class PQ, SQ, RQ (percent) from summed statistics.

  Args:
    tp, fp, fn, iou_sum: [..., C] sums over images.

  Returns:
    (pq, sq, rq, counted): float [..., C] scores and the bool [..., C] mask of the
    classes that count (TP + FP + FN > 0).
  """
  denominator = tp + 0.5 * fp + 0.5 * fn
  counted = denominator > 0
  safe = np.where(counted, denominator, 1.0)
  return (100.0 * iou_sum / safe, 100.0 * iou_sum / np.maximum(tp, 1),
          100.0 * tp / safe, counted)


def class_average(values: np.ndarray, selected: np.ndarray) -> np.ndarray:
  """Mean of `values` [..., C] over the `selected` classes; 0 where none is."""
  count = selected.sum(axis=-1)
  total = np.where(selected, values, 0.0).sum(axis=-1)
  return np.where(count > 0, total / np.maximum(count, 1), 0.0)


class PanopticQuality:
  """Streaming PQ / SQ / RQ: feed one image at a time, read `result()` at the end.

  The state is four per-class arrays (TP, FP, FN counts and the TP IoU sum)
  and the same four per image (`per_image_statistics`).

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
    self._per_image = []

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
    tp, fp, fn, iou_sum = image_statistics(
        find_segments(gt_panoptic, self._info, 'gt_panoptic'),
        find_segments(pred_panoptic, self._info, 'pred_panoptic'), self._info)
    self.tp += tp
    self.fp += fp
    self.fn += fn
    self.iou_sum += iou_sum
    self._per_image.append(np.stack([tp, fp, fn, iou_sum]).astype(np.float64))

  def per_image_statistics(self) -> np.ndarray:
    """float64 [N, 4, C]: per image in update order, the TP, FP, FN and IoU sums."""
    if not self._per_image:
      return np.zeros((0, 4, self._info.num_classes), np.float64)
    return np.stack(self._per_image)

  def result(self) -> Dict[str, object]:
    """PQ, SQ, RQ in percent (0..100), as in the papers' tables.

    Returns:
      A dict with 'pq', 'sq', 'rq' (all classes), 'pq_th', 'sq_th', 'rq_th'
      (things), 'pq_st', 'sq_st', 'rq_st' (stuff); 'n', 'n_th', 'n_st', the
      number of classes averaged (those with TP + FP + FN > 0; an average over
      no class is 0); and 'per_class', mapping the name of every averaged class
      to a dict of its 'pq', 'sq', 'rq' (percent) and 'tp', 'fp', 'fn' counts.
    """
    pq, sq, rq, counted = per_class_scores(self.tp, self.fp, self.fn, self.iou_sum)
    is_thing = np.asarray(self._info.is_thing, bool)
    results = {}
    for suffix, subset in (('', np.ones_like(is_thing)), ('_th', is_thing),
                           ('_st', ~is_thing)):
      selected = counted & subset
      for metric_name, per_class in (('pq', pq), ('sq', sq), ('rq', rq)):
        results[metric_name + suffix] = float(class_average(per_class, selected))
      results['n' + suffix] = int(selected.sum())
    results['per_class'] = {
        self._info.class_names[c]: {
            'pq': float(pq[c]), 'sq': float(sq[c]), 'rq': float(rq[c]),
            'tp': int(self.tp[c]), 'fp': int(self.fp[c]), 'fn': int(self.fn[c])}
        for c in np.flatnonzero(counted)}
    return results
