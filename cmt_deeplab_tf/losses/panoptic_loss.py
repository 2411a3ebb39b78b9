"""The CMT-DeepLab training objective: all loss terms, deep supervision and RFN.

Composes MaX-DeepLab's losses (Wang et al., CVPR 2021) -- PQ-style loss, mask-ID
cross-entropy, instance discrimination, auxiliary semantic cross-entropy -- with
CMT-DeepLab's (Yu et al., CVPR 2022) mask-approximation loss of the reference
masks. Default weights are MaX-DeepLab's published ones (PQ-style 3.0, mask-ID
0.3, instance discrimination 1.0, semantic 1.0).

The Hungarian matching is computed once, on the final output, and reused for
every intermediate layer (deep supervision, as DeepLab2 does) and for the first
network of an RFN model (supplement Sec. 1). Each layer's loss weights (Dice,
class probability) come from that layer's own predictions.

With `recompute`, each layer's terms are recomputed in the backward pass from the
layer's logits (`recompute.recompute`): the [B, h*w, N] softmaxes, products and
Dice / cross-entropy intermediates of the (up to 16) supervised layers are not
kept until the backward pass reaches them, and the layers' terms are computed,
and rerun, one after another (`recompute.after`), not side by side.

Per-image losses are summed and divided by the GLOBAL batch size, so that summing
the per-replica losses of a distribution strategy (what an optimizer's gradient
all-reduce does) gives the mean over the global batch.
"""
from typing import Dict, Mapping, Optional

import gin
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.losses import instance_discrimination
from cmt_deeplab_tf.losses import loss_targets as loss_targets_lib
from cmt_deeplab_tf.losses import mask_approximation
from cmt_deeplab_tf.losses import mask_id
from cmt_deeplab_tf.losses import matching as matching_lib
from cmt_deeplab_tf.losses import pq_style
from cmt_deeplab_tf.losses import semantic
from cmt_deeplab_tf.modeling.layers import recompute as recompute_lib
from cmt_deeplab_tf.modeling.layers import resize

# Names of the loss terms in the returned dict. Intermediate layers' terms are
# summed under AUX_PREFIX + name, the RFN first network's under
# FIRST_NETWORK_PREFIX + name.
PQ_STYLE_CLASS = 'pq_style_class'
PQ_STYLE_MASK = 'pq_style_mask'
MASK_ID = 'mask_id'
INSTANCE_DISCRIMINATION = 'instance_discrimination'
SEMANTIC = 'semantic'
MASK_APPROXIMATION = 'mask_approximation'
TOTAL = 'total'
AUX_PREFIX = 'aux/'
FIRST_NETWORK_PREFIX = 'first_network/'


class _LayerOrder:
  """The terms of the layer computed last, whose rerun the next layer's precedes."""

  def __init__(self):
    self.previous_terms = None


@gin.configurable(denylist=['num_classes', 'global_batch_size'])  # The run's.
class PanopticLoss:
  """Computes the weighted loss terms of one (per-replica) batch.

  Usage: `losses = PanopticLoss(num_classes)(targets, outputs)`;
  `losses[TOTAL]` is the scalar to minimise.
  """

  def __init__(self,
               num_classes: int,
               pq_style_weight: float = 3.0,
               mask_id_weight: float = 0.3,
               instance_discrimination_weight: float = 1.0,
               semantic_weight: float = 1.0,
               mask_approximation_weight: float = 1.0,
               aux_weight: float = 1.0,
               first_network_weight: float = 1.0,
               global_batch_size: Optional[int] = None,
               output_stride: int = 4,
               recompute: bool = False):
    """Initialises the loss.

    Args:
      num_classes: C, the number of classes without no-object.
      pq_style_weight: weight of both PQ-style terms (MaX-DeepLab: 3.0).
      mask_id_weight: weight of the mask-ID cross-entropy (MaX-DeepLab: 0.3).
      instance_discrimination_weight: MaX-DeepLab: 1.0.
      semantic_weight: weight of the auxiliary semantic loss (MaX-DeepLab: 1.0).
      mask_approximation_weight: weight of CMT-DeepLab's reference-mask loss; the
        paper does not give it, we use 1.0.
      aux_weight: multiplies every intermediate layer's losses (DeepLab2: 1.0).
      first_network_weight: multiplies the RFN first network's losses.
      global_batch_size: the batch size over all replicas; by default the local
        batch size times the current strategy's `num_replicas_in_sync`.
      output_stride: the stride of the mask logits w.r.t. the targets.
      recompute: recompute each layer's terms in the backward pass instead of
        keeping their intermediates (same values and gradients).
    """
    weights = dict(pq_style_weight=pq_style_weight, mask_id_weight=mask_id_weight,
                   instance_discrimination_weight=instance_discrimination_weight,
                   semantic_weight=semantic_weight,
                   mask_approximation_weight=mask_approximation_weight,
                   aux_weight=aux_weight, first_network_weight=first_network_weight)
    for name, value in weights.items():
      if value < 0:
        raise ValueError(f'{name} must be >= 0, got {value}')
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    if global_batch_size is not None and global_batch_size < 1:
      raise ValueError(f'global_batch_size must be >= 1, got {global_batch_size}')
    self._num_classes = num_classes
    self._weights = weights
    self._global_batch_size = global_batch_size
    self._output_stride = output_stride
    self.recompute = recompute

  def __call__(self, targets: Mapping[str, tf.Tensor],
               outputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Returns the named scalar loss terms (already weighted) and their TOTAL.

    Args:
      targets: the pipeline's targets (common.SEMANTIC, MASK_INDEX, PIXEL_WEIGHT,
        GT_CLASSES, GT_IS_THING, GT_VALID).
      outputs: the model's outputs: CLASS_LOGITS and MASK_LOGITS, and optionally
        PIXEL_EMBEDDINGS, SEMANTIC_LOGITS, REFERENCE_MASK_PARAMETERS, AUX_OUTPUTS,
        FIRST_NETWORK_OUTPUTS.
    """
    self._check_shapes(targets, outputs)
    loss_targets = loss_targets_lib.prepare_loss_targets(
        targets, self._num_classes, self._output_stride)
    matching = self._match(outputs, loss_targets)
    order = _LayerOrder()
    per_image = self._network_losses(outputs, loss_targets, matching, order)
    if outputs.get(common.FIRST_NETWORK_OUTPUTS) is not None:
      first = self._network_losses(outputs[common.FIRST_NETWORK_OUTPUTS],
                                   loss_targets, matching, order)
      for name, value in first.items():
        per_image[FIRST_NETWORK_PREFIX + name] = (
            self._weights['first_network_weight'] * value)
    global_batch_size = self._resolve_global_batch_size(targets)
    losses = {name: tf.reduce_sum(value) / global_batch_size
              for name, value in per_image.items()}
    losses[TOTAL] = tf.add_n(list(losses.values()))
    return losses

  def _check_shapes(self, targets, outputs):
    class_logits = outputs[common.CLASS_LOGITS]
    if class_logits.shape[-1] != self._num_classes + 1:
      raise ValueError(f'CLASS_LOGITS must have num_classes + 1 = '
                       f'{self._num_classes + 1} channels, got {class_logits.shape}')
    height, width = targets[common.MASK_INDEX].shape[1:3]
    if height is None or width is None:
      return
    stride = self._output_stride
    expected = [-(-height // stride), -(-width // stride)]
    if list(outputs[common.MASK_LOGITS].shape[1:3]) != expected:
      raise ValueError(f'MASK_LOGITS must be {expected} (ceil of the target size '
                       f'{height}x{width} / {stride}), got '
                       f'{outputs[common.MASK_LOGITS].shape}')

  def _resolve_global_batch_size(self, targets):
    if self._global_batch_size is not None:
      return float(self._global_batch_size)
    local_batch = tf.cast(tf.shape(targets[common.MASK_INDEX])[0], tf.float32)
    return local_batch * tf.distribute.get_strategy().num_replicas_in_sync

  @staticmethod
  def _match(outputs, loss_targets) -> matching_lib.Matching:
    """Matches the final output's predictions to the ground truth."""
    mask_probs = tf.nn.softmax(
        loss_targets_lib.flatten_pixels(outputs[common.MASK_LOGITS]), axis=-1)
    class_prob, mask_dice = matching_lib.pq_style_similarity(
        tf.nn.softmax(outputs[common.CLASS_LOGITS], axis=-1),
        mask_probs * loss_targets.pixel_valid[:, :, tf.newaxis],
        loss_targets.gt_masks, loss_targets.gt_class_one_hot)
    return matching_lib.hungarian_match(class_prob * mask_dice, loss_targets.gt_valid)

  def _network_losses(self, outputs, loss_targets, matching, order):
    """Per-image weighted terms [B] of one network, incl. its aux layers."""
    losses = self._layer_losses(outputs, loss_targets, matching, order)
    if outputs.get(common.PIXEL_EMBEDDINGS) is not None:
      losses[INSTANCE_DISCRIMINATION] = (
          self._weights['instance_discrimination_weight'] *
          instance_discrimination.instance_discrimination_loss(
              outputs[common.PIXEL_EMBEDDINGS], loss_targets))
    if outputs.get(common.SEMANTIC_LOGITS) is not None:
      losses[SEMANTIC] = self._weights['semantic_weight'] * (
          semantic.semantic_cross_entropy(outputs[common.SEMANTIC_LOGITS],
                                          loss_targets))
    for aux_outputs in outputs.get(common.AUX_OUTPUTS) or []:
      for name, value in self._layer_losses(aux_outputs, loss_targets,
                                            matching, order).items():
        key = AUX_PREFIX + name
        losses[key] = losses.get(key, 0.0) + self._weights['aux_weight'] * value
    return losses

  def _layer_losses(self, outputs, loss_targets, matching, order):
    """Per-image weighted terms [B] of one transformer layer's predictions."""
    mask_logits = outputs[common.MASK_LOGITS]
    if self.recompute and order.previous_terms is not None:
      mask_logits = recompute_lib.after(mask_logits, order.previous_terms)
    losses = recompute_lib.recompute(
        lambda class_logits, mask_logits, reference_parameters: self._layer_terms(
            class_logits, mask_logits, reference_parameters, loss_targets,
            matching),
        [outputs[common.CLASS_LOGITS], mask_logits,
         outputs.get(common.REFERENCE_MASK_PARAMETERS)],
        enabled=self.recompute)
    if self.recompute:
      order.previous_terms = tf.add_n(list(losses.values()))
    return losses

  def _layer_terms(self, class_logits, mask_logits, reference_parameters,
                   loss_targets, matching):
    """The terms of `_layer_losses` from the layer's logits."""
    class_term, mask_term = pq_style.pq_style_loss(
        class_logits, mask_logits, loss_targets, matching)
    losses = {
        PQ_STYLE_CLASS: self._weights['pq_style_weight'] * class_term,
        PQ_STYLE_MASK: self._weights['pq_style_weight'] * mask_term,
        MASK_ID: self._weights['mask_id_weight'] * mask_id.mask_id_cross_entropy(
            mask_logits, loss_targets, matching),
    }
    if reference_parameters is not None:
      height, width = resize.spatial_size(mask_logits)
      losses[MASK_APPROXIMATION] = (
          self._weights['mask_approximation_weight'] *
          mask_approximation.mask_approximation_loss(
              reference_parameters, height, width, loss_targets, matching))
    return losses
