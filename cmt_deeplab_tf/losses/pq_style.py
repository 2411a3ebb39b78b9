"""MaX-DeepLab's PQ-style loss (Wang et al., CVPR 2021, Eqs. 9-10).

For a ground-truth mask i matched to prediction j (probability p_j, mask m_hat_j):

  L_pos = p_j(c_i) * [1 - Dice(m_i, m_hat_j)]  +  Dice(m_i, m_hat_j) * [-log p_j(c_i)],

where each weight (the class probability of the mask term, the Dice of the class
term) is a constant (stop-gradient), and every unmatched prediction gets the
no-object cross-entropy L_neg = -log p_j(no-object). Positives are weighted by
alpha = 0.75 and negatives by 1 - alpha (the paper's focal-style balance, DeepLab2's
`focal_loss_alpha`). As in DeepLab2, both terms are normalised by N, the number of
predictions; the weights are floored at 1e-5, and the Dice of the class weight is
the matching's Dice (epsilon-stabilised) while the mask term is the smoothed Dice
loss of `dice.soft_dice_loss`.
"""
from typing import Tuple

import gin
import tensorflow as tf

from cmt_deeplab_tf.losses import dice
from cmt_deeplab_tf.losses import loss_targets as loss_targets_lib
from cmt_deeplab_tf.losses import matching as matching_lib

_WEIGHT_FLOOR = 1e-5


def _class_term(class_logits, targets, matching, matched_dice, positive_weight):
  """Per-image class term [B]: weighted cross-entropy of the N predictions."""
  num_classes = targets.gt_class_one_hot.shape[-1]
  is_matched = matching.pred_to_gt >= 0
  target_class = tf.where(
      is_matched,
      tf.gather(targets.gt_classes, tf.maximum(matching.pred_to_gt, 0), batch_dims=1),
      num_classes)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=target_class, logits=class_logits)
  weight = tf.where(is_matched,
                    positive_weight * tf.maximum(matched_dice, _WEIGHT_FLOOR),
                    1.0 - positive_weight)
  return tf.reduce_mean(weight * cross_entropy, axis=-1)


def _mask_term(mask_probs, targets, permutation, matched_class_prob, positive_weight):
  """Per-image mask term [B]: class-probability-weighted Dice loss of matches."""
  num_pred = permutation.shape[-1]
  matched_probs = tf.einsum('bpn,bmn->bpm', mask_probs, permutation)
  dice_loss = dice.soft_dice_loss(matched_probs, targets.gt_masks, targets.pixel_valid)
  is_matched = tf.reduce_sum(permutation, axis=-1)
  weight = is_matched * tf.maximum(matched_class_prob, _WEIGHT_FLOOR)
  return positive_weight / num_pred * tf.reduce_sum(weight * dice_loss, axis=-1)


@gin.configurable
def pq_style_loss(class_logits: tf.Tensor, mask_logits: tf.Tensor,
                  targets: loss_targets_lib.LossTargets,
                  matching: matching_lib.Matching,
                  positive_weight: float = 0.75) -> Tuple[tf.Tensor, tf.Tensor]:
  """The two terms of the PQ-style loss, per image.

  Args:
    class_logits: float32 [B, N, C + 1], last index = no-object.
    mask_logits: float32 [B, h, w, N]; masks are the softmax over the N axis.
    targets: the stride-4 `LossTargets`.
    matching: the `Matching` of these predictions to the ground truth.
    positive_weight: alpha, weight of matched predictions; unmatched ones get
      1 - alpha.

  Returns:
    (class_term, mask_term), each float32 [B].
  """
  if not 0.0 <= positive_weight <= 1.0:
    raise ValueError(f'positive_weight must be in [0, 1], got {positive_weight}')
  num_pred = class_logits.shape[1]
  mask_probs = tf.nn.softmax(loss_targets_lib.flatten_pixels(mask_logits), axis=-1)
  class_prob, mask_dice = matching_lib.pq_style_similarity(
      tf.nn.softmax(class_logits, axis=-1),
      mask_probs * targets.pixel_valid[:, :, tf.newaxis],
      targets.gt_masks, targets.gt_class_one_hot)
  permutation = matching_lib.matched_permutation(matching, num_pred)
  matched_dice = tf.stop_gradient(tf.reduce_sum(mask_dice * permutation, axis=1))
  matched_class_prob = tf.stop_gradient(
      tf.reduce_sum(class_prob * permutation, axis=2))
  return (_class_term(class_logits, targets, matching, matched_dice, positive_weight),
          _mask_term(mask_probs, targets, permutation, matched_class_prob,
                     positive_weight))
