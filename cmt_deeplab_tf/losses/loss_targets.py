"""Ground truth at the mask resolution, shared by the matching and every loss.

The data pipeline gives full-resolution targets (see `common`); mask logits live
at stride 4, h = ceil(H / 4). As in DeepLab2's MaX-DeepLab loss (Wang et al.,
CVPR 2021), the targets are brought to stride 4 by strided sampling
(`x[:, ::4, ::4]`), and a ground-truth mask whose area vanishes at stride 4 is
treated as padding.
"""
import dataclasses
from typing import Mapping

import tensorflow as tf

from cmt_deeplab_tf import common


@dataclasses.dataclass(frozen=True)
class LossTargets:
  """Targets flattened over the P = h * w pixels of the mask resolution.

  Attributes:
    mask_index: int32 [B, P], the ground-truth mask of each pixel in 0..M-1,
      -1 on void, crowd and padding.
    pixel_weight: float32 [B, P], 0 on void, crowd and padding.
    pixel_valid: float32 [B, P], 1 on pixels that belong to a ground-truth mask.
    semantic: int32 [B, P], train ids, IGNORE_LABEL on void.
    gt_masks: float32 [B, P, M], one_hot(mask_index); rows of ignored pixels are 0.
    gt_area: float32 [B, M], pixel count of each ground-truth mask.
    gt_valid: float32 [B, M], 1 for real masks with a non-zero area at stride 4.
    gt_classes: int32 [B, M], C (no-object) on padded slots.
    gt_class_one_hot: float32 [B, M, C], all-zero rows on padded slots.
  """
  mask_index: tf.Tensor
  pixel_weight: tf.Tensor
  pixel_valid: tf.Tensor
  semantic: tf.Tensor
  gt_masks: tf.Tensor
  gt_area: tf.Tensor
  gt_valid: tf.Tensor
  gt_classes: tf.Tensor
  gt_class_one_hot: tf.Tensor


def downsample_to_mask_resolution(label: tf.Tensor, stride: int = 4) -> tf.Tensor:
  """Strided sampling [B, H, W] -> [B, ceil(H / stride), ceil(W / stride)]."""
  return label[:, ::stride, ::stride]


def prepare_loss_targets(targets: Mapping[str, tf.Tensor], num_classes: int,
                         stride: int = 4) -> LossTargets:
  """Builds the stride-`stride` targets of the losses from the pipeline's targets.

  Args:
    targets: dict with common.SEMANTIC, MASK_INDEX, PIXEL_WEIGHT [B, H, W] and
      GT_CLASSES, GT_VALID [B, M] (GT_IS_THING is not needed: the pixel-wise
      instance discrimination treats thing and stuff masks alike).
    num_classes: C, the number of classes without no-object.
    stride: the output stride of the mask logits.

  Returns:
    A `LossTargets`.
  """
  gt_classes = tf.cast(targets[common.GT_CLASSES], tf.int32)
  num_masks = gt_classes.shape[-1]

  def flat(x):
    x = downsample_to_mask_resolution(x, stride)
    return tf.reshape(x, [tf.shape(x)[0], -1])

  mask_index = flat(tf.cast(targets[common.MASK_INDEX], tf.int32))
  gt_masks = tf.one_hot(mask_index, num_masks, dtype=tf.float32)
  pixel_valid = tf.reduce_sum(gt_masks, axis=-1)
  pixel_weight = flat(tf.cast(targets[common.PIXEL_WEIGHT], tf.float32)) * pixel_valid
  gt_area = tf.reduce_sum(gt_masks, axis=1)
  gt_valid = (tf.cast(targets[common.GT_VALID], tf.float32) *
              tf.cast(gt_area > 0.5, tf.float32))
  gt_classes = tf.where(gt_valid > 0, gt_classes, num_classes)
  return LossTargets(
      mask_index=mask_index,
      pixel_weight=pixel_weight,
      pixel_valid=pixel_valid,
      semantic=flat(tf.cast(targets[common.SEMANTIC], tf.int32)),
      gt_masks=gt_masks,
      gt_area=gt_area,
      gt_valid=gt_valid,
      gt_classes=gt_classes,
      gt_class_one_hot=tf.one_hot(gt_classes, num_classes, dtype=tf.float32))


def flatten_pixels(x: tf.Tensor) -> tf.Tensor:
  """[B, h, w, K] -> [B, h * w, K], the pixel order of `LossTargets`."""
  return tf.reshape(x, [tf.shape(x)[0], x.shape[1] * x.shape[2], x.shape[3]])
