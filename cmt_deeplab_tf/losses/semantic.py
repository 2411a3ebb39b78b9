"""Auxiliary semantic cross-entropy (MaX-DeepLab, Wang et al., CVPR 2021).

A training-only semantic head at stride 4 is supervised with per-pixel softmax
cross-entropy over the C classes; void and crowd pixels (pixel weight 0) are
ignored. A head may add a void logit after the C class logits (kMaX-DeepLab's
DeepLab2 head): it enters the softmax but is never a target.
"""
import tensorflow as tf

from cmt_deeplab_tf.losses import loss_targets as loss_targets_lib


def semantic_cross_entropy(semantic_logits: tf.Tensor,
                           targets: loss_targets_lib.LossTargets) -> tf.Tensor:
  """Mean over weighted pixels of the semantic cross-entropy.

  Args:
    semantic_logits: float32 [B, h, w, C], or [B, h, w, C + 1] with a void
      logit last.
    targets: the stride-4 `LossTargets`.

  Returns:
    float32 [B], sum(w * CE) / #(w > 0) with w the pixel weight.
  """
  logits = loss_targets_lib.flatten_pixels(semantic_logits)
  num_classes = logits.shape[-1]
  weight = targets.pixel_weight * tf.cast(
      tf.logical_and(targets.semantic >= 0, targets.semantic < num_classes), tf.float32)
  labels = tf.clip_by_value(targets.semantic, 0, num_classes - 1)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits)
  num_pixels = tf.reduce_sum(tf.cast(weight > 0, tf.float32), axis=-1)
  return tf.math.divide_no_nan(tf.reduce_sum(weight * cross_entropy, axis=-1),
                               num_pixels)
