"""Mean intersection-over-union of semantic maps, from a streaming confusion matrix.

IoU_c = TP_c / (TP_c + FP_c + FN_c) over all pixels of the data set (the
PASCAL VOC / Cityscapes pixel-level definition), counted only where the ground
truth is not void. A prediction of the ignore label on a labelled pixel is a
false negative of the ground-truth class and a false positive of no class. The
mean runs over the classes with TP_c + FP_c + FN_c > 0, as tf_keras' MeanIoU
and cityscapesscripts' `evalPixelLevelSemanticLabeling` (which skips NaN) do.
"""
from typing import Dict

import numpy as np

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib


class MeanIoU:
  """Streaming mIoU; memory is one [C, C + 1] confusion matrix.

  Usage:
    metric = MeanIoU(dataset_info.get_dataset_info('cityscapes'))
    for gt, pred in images:      # int [H, W] semantic maps in train ids
      metric.update(gt, pred)
    metric.result()['miou']
  """

  def __init__(self, info: dataset_info_lib.DatasetInfo):
    self._info = info
    self.reset()

  def reset(self) -> None:
    """Clears the confusion matrix."""
    num_classes = self._info.num_classes
    # confusion[g, p]: pixels of ground-truth class g predicted as p; column C
    # counts labelled pixels predicted as void.
    self.confusion = np.zeros((num_classes, num_classes + 1), np.int64)

  def update(self, gt_semantic: np.ndarray, pred_semantic: np.ndarray) -> None:
    """Accumulates one or more images.

    Args:
      gt_semantic: integer [..., H, W] train ids or the ignore label.
      pred_semantic: integer map of the same shape.

    Raises:
      ValueError: on shapes that differ or ids outside the class table.
    """
    gt_semantic, pred_semantic = np.asarray(gt_semantic), np.asarray(pred_semantic)
    if gt_semantic.shape != pred_semantic.shape:
      raise ValueError(f'pred_semantic has shape {pred_semantic.shape}, but '
                       f'gt_semantic has shape {gt_semantic.shape}.')
    num_classes = self._info.num_classes
    gt_semantic = self._checked(gt_semantic, 'gt_semantic')
    pred_semantic = self._checked(pred_semantic, 'pred_semantic')
    # The ignore label becomes index C in both maps; row C (void ground truth)
    # is dropped.
    counts = np.bincount(
        np.minimum(gt_semantic, num_classes) * (num_classes + 1) +
        np.minimum(pred_semantic, num_classes),
        minlength=(num_classes + 1)**2)
    self.confusion += counts.reshape(num_classes + 1, num_classes + 1)[:num_classes]

  def _checked(self, semantic: np.ndarray, name: str) -> np.ndarray:
    """Returns `semantic` as int64 after checking its ids (one bincount)."""
    if not np.issubdtype(semantic.dtype, np.integer):
      raise ValueError(f'{name} must hold integers, got dtype {semantic.dtype}.')
    semantic = semantic.astype(np.int64).ravel()
    num_classes, ignore_label = self._info.num_classes, self._info.ignore_label
    in_range = semantic.size == 0 or (
        semantic.min() >= 0 and semantic.max() <= max(num_classes - 1, ignore_label))
    present = np.flatnonzero(np.bincount(semantic)) if in_range else semantic
    unknown = present[((present < 0) | (present >= num_classes)) &
                      (present != ignore_label)]
    if unknown.size:
      raise ValueError(
          f'{name} holds unknown semantic ids {np.unique(unknown)[:10].tolist()}; '
          f'expected 0..{num_classes - 1} or {ignore_label}.')
    return semantic

  def result(self) -> Dict[str, object]:
    """mIoU in percent.

    Returns:
      'miou': mean IoU (percent) over the classes present in the ground truth
      or the prediction (0 if none); 'iou_per_class': maps those classes' names
      to their IoU in percent.
    """
    num_classes = self._info.num_classes
    true_positive = np.diag(self.confusion[:, :num_classes])
    union = (self.confusion.sum(axis=1) + self.confusion[:, :num_classes].sum(axis=0)
             - true_positive)
    present = union > 0
    iou = 100.0 * true_positive / np.maximum(union, 1)
    return {
        'miou': float(iou[present].mean()) if present.any() else 0.0,
        'iou_per_class': {self._info.class_names[c]: float(iou[c])
                          for c in np.flatnonzero(present)},
    }
