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
  thing_table = tf.constant(list(is_thing) + [False], tf.bool)
  # One pass over the pixels: the distinct ids and each pixel's index among them.
  ids, pixel_to_id = tf.unique(tf.reshape(panoptic, [-1]))
  id_semantic = ids // label_divisor
  id_is_void = tf.logical_or(id_semantic < 0, id_semantic >= num_classes)
  id_is_crowd = tf.logical_and(
      tf.gather(thing_table, tf.where(id_is_void, num_classes, id_semantic)),
      tf.equal(ids % label_divisor, 0))
  id_is_kept = _keep_largest(tf.logical_not(tf.logical_or(id_is_void, id_is_crowd)),
                             pixel_to_id, max_num_masks)
  # Slots follow increasing panoptic id among the kept ids; -1 for the rest.
  kept_ids = tf.sort(tf.boolean_mask(ids, id_is_kept))
  id_slot = tf.where(id_is_kept, tf.searchsorted(kept_ids, ids, out_type=tf.int32), -1)
  mask_index = tf.reshape(tf.gather(id_slot, pixel_to_id), tf.shape(panoptic))

  semantic = panoptic // label_divisor
  is_void = tf.logical_or(semantic < 0, semantic >= num_classes)
  padding = [[0, max_num_masks - tf.shape(kept_ids)[0]]]
  gt_classes = tf.ensure_shape(
      tf.pad(kept_ids // label_divisor, padding, constant_values=num_classes),
      [max_num_masks])
  gt_valid = tf.ensure_shape(tf.pad(tf.ones_like(kept_ids, tf.float32), padding),
                             [max_num_masks])
  return {
      common.SEMANTIC: tf.where(is_void, ignore_label, semantic),
      common.MASK_INDEX: mask_index,
      common.PIXEL_WEIGHT: tf.cast(mask_index >= 0, tf.float32),
      common.GT_CLASSES: gt_classes,
      common.GT_IS_THING: tf.cast(tf.gather(thing_table, gt_classes), tf.float32),
      common.GT_VALID: gt_valid,
  }


def _keep_largest(is_labeled: tf.Tensor, pixel_to_id: tf.Tensor,
                  max_num_masks: int) -> tf.Tensor:
  """Restricts the labeled ids [K] to the `max_num_masks` of largest area."""
  def largest():
    areas = tf.math.unsorted_segment_sum(tf.ones_like(pixel_to_id), pixel_to_id,
                                         tf.shape(is_labeled)[0])
    areas = tf.where(is_labeled, areas, -1)
    top = tf.math.top_k(areas, max_num_masks).indices
    return tf.scatter_nd(top[:, None], tf.ones_like(top, tf.bool), tf.shape(is_labeled))
  num_labeled = tf.reduce_sum(tf.cast(is_labeled, tf.int32))
  return tf.cond(num_labeled > max_num_masks, largest, lambda: is_labeled)
