"""Soft Dice loss of mask pairs (V-Net, Milletari et al., 3DV 2016).

MaX-DeepLab (Wang et al., CVPR 2021) uses it for the mask term of the PQ-style
loss; we reuse it for CMT-DeepLab's mask-approximation loss. As DeepLab2's
`compute_mask_dice_loss`, it is computed on labelled pixels only, with a smoothing
constant of 1 in numerator and denominator.
"""
import tensorflow as tf

_SMOOTH = 1.0


def soft_dice_loss(pred_masks: tf.Tensor, gt_masks: tf.Tensor,
                   pixel_valid: tf.Tensor) -> tf.Tensor:
  """1 - (2 |p . g| + 1) / (|p| + |g| + 1) for each of K mask pairs.

  Args:
    pred_masks: float32 [B, P, K], soft masks in [0, 1].
    gt_masks: float32 [B, P, K], binary masks.
    pixel_valid: float32 [B, P], 1 on labelled pixels; others are ignored.

  Returns:
    float32 [B, K].
  """
  pred_masks *= pixel_valid[:, :, tf.newaxis]
  intersection = tf.reduce_sum(pred_masks * gt_masks, axis=1)
  total = tf.reduce_sum(pred_masks, axis=1) + tf.reduce_sum(gt_masks, axis=1)
  return 1.0 - (2.0 * intersection + _SMOOTH) / (total + _SMOOTH)
