"""Mask-approximation loss of CMT-DeepLab's reference masks (Yu et al., CVPR 2022).

Every cluster center predicts a soft reference mask (location-sensitive
clustering); the paper pulls it toward the ground-truth mask matched to the
cluster but gives no formula. Our choice: for every matched pair, the sigmoid
reference mask is compared with the binary ground-truth mask by
`dice_weight * soft Dice loss + bce_weight * mean binary cross-entropy`, both
over labelled pixels (void and crowd ignored), averaged over matched masks.
Dice rewards the overlap regardless of mask size; BCE gives every pixel a
gradient, also far from the object. Unmatched clusters are not supervised.

The model hands over each center's Gaussian parameters [B, N, 5], not its mask:
the loss draws only the matched clusters' masks, [B, h*w, M], so no [B, h, w, N]
map per supervised layer waits in memory for the backward pass.
"""
import gin
import tensorflow as tf

from cmt_deeplab_tf.losses import dice
from cmt_deeplab_tf.losses import loss_targets as loss_targets_lib
from cmt_deeplab_tf.losses import matching as matching_lib
from cmt_deeplab_tf.modeling.layers import reference_mask


@gin.configurable
def mask_approximation_loss(reference_parameters: tf.Tensor,
                            height, width,
                            targets: loss_targets_lib.LossTargets,
                            matching: matching_lib.Matching,
                            dice_weight: float = 1.0,
                            bce_weight: float = 1.0) -> tf.Tensor:
  """Dice + BCE between matched reference masks and ground-truth masks.

  Args:
    reference_parameters: float32 [B, N, 5], each center's Gaussian
      (`reference_mask.gaussian_mask_logits`; sigmoid = the reference mask).
    height: h, the height of the targets' grid.
    width: w, its width (h * w pixels).
    targets: the stride-4 `LossTargets`.
    matching: the `Matching` of the clusters to the ground truth.
    dice_weight: weight of the soft Dice loss.
    bce_weight: weight of the binary cross-entropy.

  Returns:
    float32 [B], the mean over matched ground-truth masks.
  """
  if dice_weight < 0 or bce_weight < 0:
    raise ValueError(f'dice_weight and bce_weight must be >= 0, got '
                     f'{dice_weight} and {bce_weight}')
  permutation = matching_lib.matched_permutation(
      matching, reference_parameters.shape[1])
  matched_parameters = tf.einsum('bnk,bmn->bmk', reference_parameters,
                                 permutation)
  matched_logits = loss_targets_lib.flatten_pixels(  # [B, h*w, M]
      reference_mask.gaussian_mask_logits(matched_parameters, height, width))
  pixel_valid = targets.pixel_valid
  dice_loss = dice.soft_dice_loss(tf.sigmoid(matched_logits), targets.gt_masks,
                                  pixel_valid)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets.gt_masks,
                                                logits=matched_logits)
  mean_bce = tf.math.divide_no_nan(
      tf.einsum('bpm,bp->bm', bce, pixel_valid),
      tf.reduce_sum(pixel_valid, axis=-1, keepdims=True))
  is_matched = tf.cast(matching.gt_to_pred >= 0, tf.float32)
  per_mask = dice_weight * dice_loss + bce_weight * mean_bce
  return tf.math.divide_no_nan(tf.reduce_sum(per_mask * is_matched, axis=-1),
                               tf.reduce_sum(is_matched, axis=-1))
