"""Mask-ID cross-entropy (MaX-DeepLab, Wang et al., CVPR 2021, Sec. 3.2).

Each labelled pixel is classified into the N predicted masks (softmax over the
cluster axis); its target is the prediction matched to its ground-truth mask.
Pixels of a ground-truth mask left unmatched (more masks than predictions) have
no target and are skipped, as are void and crowd pixels.
"""
import tensorflow as tf

from cmt_deeplab_tf.losses import loss_targets as loss_targets_lib
from cmt_deeplab_tf.losses import matching as matching_lib


def mask_id_cross_entropy(mask_logits: tf.Tensor,
                          targets: loss_targets_lib.LossTargets,
                          matching: matching_lib.Matching) -> tf.Tensor:
  """Mean over weighted pixels of -log softmax_N(mask_logits)[matched slot].

  Args:
    mask_logits: float32 [B, h, w, N].
    targets: the stride-4 `LossTargets`.
    matching: the `Matching` of these predictions to the ground truth.

  Returns:
    float32 [B], sum(w * CE) / #(w > 0) with w the pixel weight.
  """
  logits = loss_targets_lib.flatten_pixels(mask_logits)
  target_slot = tf.gather(matching.gt_to_pred, tf.maximum(targets.mask_index, 0),
                          batch_dims=1)
  has_target = tf.logical_and(targets.mask_index >= 0, target_slot >= 0)
  weight = targets.pixel_weight * tf.cast(has_target, tf.float32)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.maximum(target_slot, 0), logits=logits)
  num_pixels = tf.reduce_sum(tf.cast(weight > 0, tf.float32), axis=-1)
  return tf.math.divide_no_nan(tf.reduce_sum(weight * cross_entropy, axis=-1),
                               num_pixels)
