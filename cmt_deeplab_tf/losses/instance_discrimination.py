"""Pixel-wise instance discrimination loss (CMT-DeepLab, Yu et al., CVPR 2022).

CMT-DeepLab supervises the L2-normalised pixel embeddings with a pixel-wise
contrastive loss (DeepLab2 credits its `pixel contrastive instance
discrimination` to CMT-DeepLab): K labelled pixels are sampled, each pixel's
logits are its cosine similarities to the K sampled pixels divided by a
temperature tau, and its target distribution is uniform over the sampled pixels
of its own ground-truth mask (thing or stuff). Sampling uses the Gumbel-top-k
trick with logits `sample_temperature * log(P / mask area)`, which favours pixels
of small masks. Defaults are DeepLab2's: tau = 0.3, sample temperature 0.6, and
K = 4096 as in DeepLab2's configs that enable the pixel-wise variant.
"""
import gin
import tensorflow as tf

from cmt_deeplab_tf.losses import loss_targets as loss_targets_lib
from cmt_deeplab_tf.modeling import random_draws

_MASKED_LOGIT = -1e9


def _sample_pixels(targets: loss_targets_lib.LossTargets, sample_k: int,
                   sample_temperature: float) -> tf.Tensor:
  """int32 [B, K]: labelled pixels, favouring small masks (Gumbel-top-k)."""
  num_pixels = targets.mask_index.shape[1]
  pixel_area = tf.einsum('bpm,bm->bp', targets.gt_masks, targets.gt_area)
  logits = sample_temperature * tf.math.log(num_pixels / tf.maximum(pixel_area, 1.0))
  logits += (1.0 - targets.pixel_valid) * _MASKED_LOGIT
  uniform = random_draws.uniform(tf.shape(logits), minval=1e-12, maxval=1.0)
  gumbel = -tf.math.log(-tf.math.log(uniform))
  return tf.math.top_k(logits + gumbel, k=sample_k).indices


@gin.configurable
def instance_discrimination_loss(pixel_embeddings: tf.Tensor,
                                 targets: loss_targets_lib.LossTargets,
                                 temperature: float = 0.3,
                                 sample_k: int = 4096,
                                 sample_temperature: float = 0.6) -> tf.Tensor:
  """Soft-target cross-entropy of pixel-to-pixel similarities.

  Args:
    pixel_embeddings: float32 [B, h, w, D], L2-normalised.
    targets: the stride-4 `LossTargets`.
    temperature: tau, divides the cosine similarities.
    sample_k: K, the number of sampled pixels; 0 (or K >= h * w) uses all pixels.
    sample_temperature: sharpness of the preference for small masks.

  Returns:
    float32 [B], the mean over labelled sampled pixels.
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be positive, got {temperature}')
  if sample_k < 0:
    raise ValueError(f'sample_k must be >= 0, got {sample_k}')
  features = loss_targets_lib.flatten_pixels(pixel_embeddings)
  mask_index, pixel_valid = targets.mask_index, targets.pixel_valid
  if 0 < sample_k < features.shape[1]:
    indices = _sample_pixels(targets, sample_k, sample_temperature)
    features = tf.gather(features, indices, batch_dims=1)
    mask_index = tf.gather(mask_index, indices, batch_dims=1)
    pixel_valid = tf.gather(pixel_valid, indices, batch_dims=1)
  # With a target uniform over the pixels of one's own mask, the cross-entropy
  # is logsumexp_j(l_kj) - mean_{j in mask(k)} l_kj, and the mean is the dot
  # product with the mask's mean feature: no [K, K] target is materialised.
  logits = tf.einsum('bkd,bjd->bkj', features, features) / temperature
  logits = tf.where(pixel_valid[:, tf.newaxis, :] > 0, logits, _MASKED_LOGIT)
  membership = tf.one_hot(mask_index, targets.gt_masks.shape[-1]) * pixel_valid[
      :, :, tf.newaxis]                                                     # [B, K, M]
  mask_mean = tf.math.divide_no_nan(
      tf.einsum('bkm,bkd->bmd', membership, features),
      tf.reduce_sum(membership, axis=1)[:, :, tf.newaxis])
  own_mean = tf.gather(mask_mean, tf.maximum(mask_index, 0), batch_dims=1)
  positive = tf.reduce_sum(features * own_mean, axis=-1) / temperature
  cross_entropy = tf.reduce_logsumexp(logits, axis=-1) - positive
  return tf.math.divide_no_nan(tf.reduce_sum(cross_entropy * pixel_valid, axis=-1),
                               tf.reduce_sum(pixel_valid, axis=-1))
