"""Data-set evaluator fed by the eval loop: PQ / SQ / RQ and mIoU in one dict.

Takes the ground-truth and prediction dicts of the shared contract
(`cmt_deeplab_tf.common`), batched or not, crops them to `VALID_SIZE` when the
ground truth carries it (padding is not part of the image), and forwards each
image to `PanopticQuality` (panoptic maps) and `MeanIoU` (semantic maps); the
result also carries the bootstrap interval of PQ over the images (`bootstrap`).
"""
from typing import Dict, Mapping

import numpy as np

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import bootstrap
from cmt_deeplab_tf.evaluation import mean_iou
from cmt_deeplab_tf.evaluation import panoptic_quality


class PanopticEvaluator:
  """Streaming PQ, SQ, RQ (all / things / stuff / per class) and mIoU.

  Usage:
    evaluator = PanopticEvaluator(dataset_info.get_dataset_info('coco'))
    for features, predictions in eval_batches:   # numpy or eager tensors
      evaluator.update(features, predictions)
    results = evaluator.result()   # {'pq': 41.2, ..., 'miou': 55.0, ...}
  """

  def __init__(self, info: dataset_info_lib.DatasetInfo):
    self._panoptic_quality = panoptic_quality.PanopticQuality(info)
    self._mean_iou = mean_iou.MeanIoU(info)

  def reset(self) -> None:
    """Clears all accumulated statistics."""
    self._panoptic_quality.reset()
    self._mean_iou.reset()

  def update(self, groundtruth: Mapping[str, np.ndarray],
             prediction: Mapping[str, np.ndarray]) -> None:
    """Accumulates a batch [B, H, W] or a single image [H, W].

    Args:
      groundtruth: holds common.PANOPTIC and common.SEMANTIC (integer
        [B, H, W] or [H, W]) and optionally common.VALID_SIZE (int [B, 2] or
        [2], the image's height and width inside the padded crop).
      prediction: holds common.PANOPTIC_PRED and common.SEMANTIC_PRED, of the
        ground truth's shape.

    Raises:
      ValueError: on a missing key, shapes that differ, or unknown ids.
    """
    arrays = {}
    for name, source in ((common.PANOPTIC, groundtruth),
                         (common.SEMANTIC, groundtruth),
                         (common.PANOPTIC_PRED, prediction),
                         (common.SEMANTIC_PRED, prediction)):
      if name not in source:
        raise ValueError(f'Missing {name!r}; got keys {sorted(source)}.')
      array = np.asarray(source[name])
      arrays[name] = array if array.ndim != 2 else array[np.newaxis]
    batch_size = arrays[common.PANOPTIC].shape[0]
    valid_size = groundtruth.get(common.VALID_SIZE)
    if valid_size is not None:
      valid_size = np.reshape(np.asarray(valid_size), (-1, 2))
    for name, array in arrays.items():
      if array.shape[0] != batch_size:
        raise ValueError(f'{name} has batch size {array.shape[0]}, but '
                         f'{common.PANOPTIC} has {batch_size}.')
    for i in range(batch_size):
      height, width = (None, None) if valid_size is None else valid_size[i]
      image = {name: array[i, :height, :width] for name, array in arrays.items()}
      self._panoptic_quality.update(image[common.PANOPTIC],
                                    image[common.PANOPTIC_PRED])
      self._mean_iou.update(image[common.SEMANTIC], image[common.SEMANTIC_PRED])

  def result(self) -> Dict[str, object]:
    """All metrics in percent.

    Returns:
      `PanopticQuality.result()` ('pq', 'sq', 'rq', '*_th', '*_st', 'n*',
      'per_class') merged with `MeanIoU.result()` ('miou', 'iou_per_class'),
      'num_images', and 'pq_ci_low', 'pq_ci_high': the 95% bootstrap interval
      of PQ over the images (`bootstrap.pq_interval`, 1000 seeded resamples).
    """
    results = self._panoptic_quality.result()
    per_image = self._panoptic_quality.per_image_statistics()
    results['num_images'] = per_image.shape[0]
    results['pq_ci_low'], results['pq_ci_high'] = bootstrap.pq_interval(per_image)
    results.update(self._mean_iou.result())
    return results
