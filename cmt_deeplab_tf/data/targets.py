"""MaX-DeepLab-style training targets with static shapes (Wang et al., CVPR 2021).

From a panoptic label [H, W] in train ids, builds the per-pixel maps and the padded
list of ground-truth masks that the Hungarian matching and the losses consume. The
masks themselves are represented by `MASK_INDEX` (each pixel's slot in the list):
`tf.one_hot(mask_index, max_num_masks)` materialises them at any stride, so the
pipeline never carries M full-resolution masks per image.
"""
from typing import Dict, Sequence

import tensorflow as tf

from cmt_deeplab_tf import common


def build_targets(panoptic: tf.Tensor, is_thing: Sequence[bool], label_divisor: int,
                  max_num_masks: int,
                  ignore_label: int = common.IGNORE_LABEL) -> Dict[str, tf.Tensor]:
  """Builds the targets of one example.

  Ground-truth masks are the distinct panoptic ids over non-ignored pixels, in
  increasing id order. Void and crowd pixels (a thing class with instance 0) are
  ignored. If an image has more than `max_num_masks` segments, the largest ones are
  kept and the pixels of the others are ignored.

  Args:
    panoptic: int32 [H, W], `train_id * label_divisor + instance`.
    is_thing: per train id, whether the class is a thing.
    label_divisor: the panoptic label divisor.
    max_num_masks: M, the number of ground-truth slots.
    ignore_label: the semantic value of void pixels.

  Returns:
    A dict with SEMANTIC [H, W], MASK_INDEX [H, W], PIXEL_WEIGHT [H, W],
    GT_CLASSES [M], GT_IS_THING [M], GT_VALID [M] (see `common`).
  """
  num_classes = len(is_thing)
  semantic = panoptic // label_divisor
  instance = panoptic % label_divisor
  thing_table = tf.constant(list(is_thing) + [False], tf.bool)
  is_void = tf.logical_or(semantic < 0, semantic >= num_classes)
  safe_semantic = tf.where(is_void, num_classes, semantic)
  is_crowd = tf.logical_and(tf.gather(thing_table, safe_semantic), tf.equal(instance, 0))
  is_labeled = tf.logical_not(tf.logical_or(is_void, is_crowd))

  segment_ids = tf.sort(tf.unique(tf.boolean_mask(panoptic, is_labeled)).y)
  segment_ids = _keep_largest(segment_ids, panoptic, is_labeled, max_num_masks)
  slot = tf.searchsorted(segment_ids, tf.reshape(panoptic, [-1]), out_type=tf.int32)
  slot = tf.reshape(slot, tf.shape(panoptic))
  found = tf.equal(tf.gather(tf.concat([segment_ids, [-1]], 0), slot), panoptic)
  is_kept = tf.logical_and(is_labeled, found)

  num_masks = tf.shape(segment_ids)[0]
  padding = [[0, max_num_masks - num_masks]]
  gt_classes = tf.ensure_shape(
      tf.pad(segment_ids // label_divisor, padding, constant_values=num_classes),
      [max_num_masks])
  gt_valid = tf.ensure_shape(tf.pad(tf.ones([num_masks], tf.float32), padding),
                             [max_num_masks])
  return {
      common.SEMANTIC: tf.where(is_void, ignore_label, semantic),
      common.MASK_INDEX: tf.where(is_kept, slot, -1),
      common.PIXEL_WEIGHT: tf.cast(is_kept, tf.float32),
      common.GT_CLASSES: gt_classes,
      common.GT_IS_THING: tf.cast(tf.gather(thing_table, gt_classes), tf.float32),
      common.GT_VALID: gt_valid,
  }


def _keep_largest(segment_ids: tf.Tensor, panoptic: tf.Tensor, is_labeled: tf.Tensor,
                  max_num_masks: int) -> tf.Tensor:
  """Keeps the `max_num_masks` largest segments, still in increasing id order."""
  def largest():
    labeled = tf.boolean_mask(panoptic, is_labeled)
    areas = tf.math.unsorted_segment_sum(
        tf.ones_like(labeled), tf.searchsorted(segment_ids, labeled),
        tf.shape(segment_ids)[0])
    return tf.sort(tf.gather(segment_ids, tf.math.top_k(areas, max_num_masks).indices))
  return tf.cond(tf.shape(segment_ids)[0] > max_num_masks, largest, lambda: segment_ids)


def masks_from_index(mask_index: tf.Tensor, max_num_masks: int) -> tf.Tensor:
  """Materialises ground-truth masks: [..., H, W] indices -> [..., H, W, M] in {0, 1}."""
  return tf.one_hot(mask_index, max_num_masks, dtype=tf.float32)
