"""From class and mask logits to panoptic, semantic and instance maps, in pure TF.

Two ways of turning the N (mask, class) predictions of a mask transformer into a
non-overlapping panoptic map:

- 'pixelwise' (MaX-DeepLab, Wang et al., CVPR 2021; the CMT-DeepLab supplement's
  Cityscapes setting): every pixel takes the argmax of the mask logits over the N
  clusters; it is void unless that cluster's class confidence passes its
  threshold and the pixel's mask probability, renormalised over confident
  clusters, exceeds `pixel_confidence_threshold`.
- 'maskwise' (MaskFormer; CMT-DeepLab's COCO setting, as in DeepLab2): each
  confident cluster's binary mask (probability > `pixel_confidence_threshold`)
  is pasted onto an empty canvas in decreasing order of
  class_confidence ** reorder_class_weight * mask_score ** reorder_mask_weight,
  and dropped if less than `overlap_threshold` of it is still free.

Then thing segments smaller than `thing_area_limit` pixels and stuff classes
covering fewer than `stuff_area_limit` pixels become void; stuff clusters of one
class merge into one segment; thing segments get instance ids 1, 2, ... in
cluster order. Definitions and defaults follow DeepLab2's
`model/post_processor/max_deeplab.py` and `evaluator.proto` (class confidence
0.7, pixel confidence 0.4; area limits 100 / 1600 of its COCO MaX-DeepLab-S
config; mask-wise overlap 0.5, reorder weights 1 and 0).

Everything is static-shape TF (no bincount, no Python-side work): it compiles
with XLA and can live inside an exported SavedModel.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import tensorflow as tf

from cmt_deeplab_tf import common

# Per-cluster outputs for serving (static shape [B, N]). Proposed for `common`.

_METHODS = ('pixelwise', 'maskwise')
_MASKED_LOGIT = -1e9

Size = Union[Tuple[int, int], tf.Tensor]


def upsample_mask_logits(mask_logits: tf.Tensor, output_size: Size,
                         stride: int = 4) -> tf.Tensor:
  """Bilinear upsampling that puts logit (i, j) on pixel (stride*i, stride*j).

  This is the alignment of the stride-4 targets (`label[::4, ::4]`); beyond the
  last logit the edge value is repeated. For H = stride * (h - 1) + 1 it equals
  `align_corners=True` resizing.

  Args:
    mask_logits: float32 [B, h, w, N].
    output_size: (H, W).
    stride: the output stride of the logits.

  Returns:
    float32 [B, H, W, N].
  """
  def interpolate(x, axis, out_len):
    in_len = tf.shape(x)[axis]
    position = tf.range(out_len, dtype=tf.float32) / stride
    low = tf.minimum(tf.cast(tf.floor(position), tf.int32), in_len - 1)
    high = tf.minimum(low + 1, in_len - 1)
    frac = position - tf.cast(low, tf.float32)
    frac = tf.reshape(frac, [-1] + [1] * (3 - axis))
    return (tf.gather(x, low, axis=axis) * (1.0 - frac) +
            tf.gather(x, high, axis=axis) * frac)

  return interpolate(interpolate(mask_logits, 1, output_size[0]), 2, output_size[1])


def _count_per_segment(segment_ids: tf.Tensor, include: tf.Tensor,
                       num_segments: int) -> tf.Tensor:
  """int32 [B, S]: per image, the number of included pixels of each segment id.

  A static-shape replacement of `bincount` (which XLA cannot compile).

  Args:
    segment_ids: int32 [B, H, W] in 0..S-1.
    include: bool [B, H, W].
    num_segments: S.
  """
  batch = tf.shape(segment_ids)[0]
  offsets = tf.range(batch)[:, tf.newaxis, tf.newaxis] * num_segments
  counts = tf.math.unsorted_segment_sum(
      tf.cast(include, tf.int32), segment_ids + offsets, batch * num_segments)
  return tf.reshape(counts, [batch, num_segments])


def _inside(batch_size_hw: tf.Tensor, valid_size) -> tf.Tensor:
  """bool [B, H, W]: pixels within each image's valid (height, width), all if None."""
  if valid_size is None:
    return tf.ones(batch_size_hw, tf.bool)
  valid_size = tf.cast(valid_size, tf.int32)
  rows = tf.range(batch_size_hw[1])[tf.newaxis, :, tf.newaxis]
  cols = tf.range(batch_size_hw[2])[tf.newaxis, tf.newaxis, :]
  return ((rows < valid_size[:, 0, tf.newaxis, tf.newaxis]) &
          (cols < valid_size[:, 1, tf.newaxis, tf.newaxis]))


def _gather_per_pixel(per_slot: tf.Tensor, slot_map: tf.Tensor) -> tf.Tensor:
  """[B, N] values, [B, H, W] indices -> [B, H, W]."""
  return tf.gather(per_slot, slot_map, batch_dims=1)


@gin.configurable(denylist=['is_thing', 'label_divisor'])  # The data set's.
class PostProcessor:
  """Post-processes CLASS_LOGITS and MASK_LOGITS into panoptic predictions."""

  def __init__(self,
               is_thing: Sequence[bool],
               label_divisor: int,
               method: str = 'pixelwise',
               thing_class_threshold: float = 0.7,
               stuff_class_threshold: float = 0.7,
               pixel_confidence_threshold: float = 0.4,
               thing_area_limit: int = 100,
               stuff_area_limit: int = 1600,
               overlap_threshold: float = 0.5,
               reorder_class_weight: float = 1.0,
               reorder_mask_weight: float = 0.0,
               semantic_without_thresholds: bool = True,
               output_stride: int = 4):
    """Initialises the post-processor.

    Args:
      is_thing: per train id, whether the class is a thing (`DatasetInfo`).
      label_divisor: panoptic id = semantic * label_divisor + instance.
      method: 'pixelwise' or 'maskwise'.
      thing_class_threshold: minimum class confidence of a thing cluster.
      stuff_class_threshold: minimum class confidence of a stuff cluster.
      pixel_confidence_threshold: minimum mask probability of a pixel.
      thing_area_limit: thing segments with fewer pixels become void.
      stuff_area_limit: stuff classes with fewer pixels become void.
      overlap_threshold: maskwise only, the fraction of a mask that must still be
        free for it to be pasted.
      reorder_class_weight: maskwise only, exponent of the class confidence in
        the pasting order.
      reorder_mask_weight: maskwise only, exponent of the mask score (mean
        probability inside the binary mask) in the pasting order.
      semantic_without_thresholds: if True (DeepLab2's choice for mIoU),
        SEMANTIC_PRED is the class of each pixel's argmax cluster without any
        threshold or void; if False it is PANOPTIC_PRED // label_divisor.
      output_stride: the stride of MASK_LOGITS w.r.t. the output size.
    """
    if method not in _METHODS:
      raise ValueError(f'method must be one of {_METHODS}, got {method!r}')
    if label_divisor <= 0:
      raise ValueError(f'label_divisor must be positive, got {label_divisor}')
    for name, value in [('thing_class_threshold', thing_class_threshold),
                        ('stuff_class_threshold', stuff_class_threshold),
                        ('pixel_confidence_threshold', pixel_confidence_threshold),
                        ('overlap_threshold', overlap_threshold)]:
      if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {value}')
    if thing_area_limit < 0 or stuff_area_limit < 0:
      raise ValueError(f'area limits must be >= 0, got thing_area_limit='
                       f'{thing_area_limit}, stuff_area_limit={stuff_area_limit}')
    self._is_thing = tf.constant(list(is_thing), tf.bool)
    self._num_classes = len(is_thing)
    self._label_divisor = label_divisor
    self._method = method
    self._thing_class_threshold = thing_class_threshold
    self._stuff_class_threshold = stuff_class_threshold
    self._pixel_confidence_threshold = pixel_confidence_threshold
    self._thing_area_limit = thing_area_limit
    self._stuff_area_limit = stuff_area_limit
    self._overlap_threshold = overlap_threshold
    self._reorder_class_weight = reorder_class_weight
    self._reorder_mask_weight = reorder_mask_weight
    self._semantic_without_thresholds = semantic_without_thresholds
    self._output_stride = output_stride

  def __call__(self, outputs: Mapping[str, tf.Tensor], output_size: Size,
               valid_size: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """Post-processes one batch.

    Args:
      outputs: dict with common.CLASS_LOGITS [B, N, C + 1] and MASK_LOGITS
        [B, h, w, N].
      output_size: (H, W) of the predictions, usually the input crop size.
      valid_size: optional int [B, 2], the (height, width) of each image at the
        top left of a padded input (common.VALID_SIZE). Pixels beyond it are
        void and count toward no area, mask score or overlap, so evaluating on
        padded crops applies the thresholds serving applies at the image's size.

    Returns:
      PANOPTIC_PRED, SEMANTIC_PRED, INSTANCE_PRED (int32 [B, H, W]; void pixels
      are IGNORE_LABEL * label_divisor, IGNORE_LABEL and 0), and per cluster
      common.SEGMENT_PANOPTIC_IDS (int32 [B, N]) and common.SEGMENT_SCORES (float32 [B, N]).
    """
    class_logits = outputs[common.CLASS_LOGITS]
    if class_logits.shape[-1] != self._num_classes + 1:
      raise ValueError(f'CLASS_LOGITS must have {self._num_classes + 1} channels '
                       f'(classes + no-object), got shape {class_logits.shape}')
    class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :self._num_classes]
    slot_class = tf.argmax(class_probs, axis=-1, output_type=tf.int32)
    slot_score = tf.reduce_max(class_probs, axis=-1)
    slot_is_thing = tf.gather(self._is_thing, slot_class)
    slot_kept = slot_score >= tf.where(slot_is_thing, self._thing_class_threshold,
                                       self._stuff_class_threshold)
    mask_logits = upsample_mask_logits(outputs[common.MASK_LOGITS], output_size,
                                       self._output_stride)
    inside = _inside(tf.shape(mask_logits)[:3], valid_size)
    if self._method == 'pixelwise':
      slot_map, assigned = self._pixelwise_assignment(mask_logits, slot_kept)
    else:
      slot_map, assigned = self._maskwise_assignment(mask_logits, slot_kept,
                                                     slot_score, inside)
    predictions = self._panoptic_maps(slot_map, assigned & inside, slot_class,
                                      slot_score, slot_is_thing)
    if self._semantic_without_thresholds:
      semantic = _gather_per_pixel(
          slot_class, tf.argmax(mask_logits, axis=-1, output_type=tf.int32))
      predictions[common.SEMANTIC_PRED] = tf.where(inside, semantic, common.IGNORE_LABEL)
    return predictions

  def _pixelwise_assignment(self, mask_logits, slot_kept):
    """Each pixel's argmax cluster; unassigned if not confident (MaX-DeepLab)."""
    kept = slot_kept[:, tf.newaxis, tf.newaxis, :]
    kept_logits = tf.where(kept, mask_logits, _MASKED_LOGIT)
    confidence = tf.reduce_max(tf.nn.softmax(kept_logits, axis=-1), axis=-1)
    slot_map = tf.argmax(mask_logits, axis=-1, output_type=tf.int32)
    assigned = tf.logical_and(_gather_per_pixel(slot_kept, slot_map),
                              confidence > self._pixel_confidence_threshold)
    return slot_map, assigned

  def _maskwise_assignment(self, mask_logits, slot_kept, slot_score, inside):
    """Pastes confident binary masks from the most to the least confident."""
    num_slots = mask_logits.shape[-1]
    probs = tf.nn.softmax(mask_logits, axis=-1)
    binary = (probs > self._pixel_confidence_threshold) & inside[..., tf.newaxis]
    binary_float = tf.cast(binary, tf.float32)
    mask_score = tf.math.divide_no_nan(
        tf.reduce_sum(probs * binary_float, axis=[1, 2]),
        tf.reduce_sum(binary_float, axis=[1, 2]))
    order_score = (slot_score ** self._reorder_class_weight *
                   mask_score ** self._reorder_mask_weight)
    order = tf.argsort(order_score, axis=-1, direction='DESCENDING', stable=True)
    binary_by_slot = tf.transpose(binary, [0, 3, 1, 2])  # [B, N, H, W]
    binary_area = tf.reduce_sum(binary_float, axis=[1, 2])

    def paste(rank, canvas):
      slot = order[:, rank]
      mask = tf.gather(binary_by_slot, slot, batch_dims=1)
      free = tf.logical_and(mask, canvas < 0)
      free_area = tf.reduce_sum(tf.cast(free, tf.float32), axis=[1, 2])
      accept = tf.logical_and(
          tf.gather(slot_kept, slot, batch_dims=1),
          free_area > self._overlap_threshold * tf.gather(binary_area, slot,
                                                          batch_dims=1))
      paste_here = tf.logical_and(free, accept[:, tf.newaxis, tf.newaxis])
      return rank + 1, tf.where(paste_here, slot[:, tf.newaxis, tf.newaxis], canvas)

    canvas = -tf.ones(tf.shape(mask_logits)[:3], tf.int32)
    _, canvas = tf.while_loop(lambda rank, _: rank < num_slots, paste,
                              (tf.constant(0), canvas))
    return tf.maximum(canvas, 0), canvas >= 0

  def _panoptic_maps(self, slot_map, assigned, slot_class, slot_score,
                     slot_is_thing):
    """Area limits, stuff merging, instance ids, and the per-cluster outputs."""
    num_slots = slot_class.shape[-1]
    semantic = _gather_per_pixel(slot_class, slot_map)
    is_thing = tf.logical_and(assigned, _gather_per_pixel(slot_is_thing, slot_map))
    is_stuff = tf.logical_and(assigned, tf.logical_not(is_thing))
    thing_area = _count_per_segment(slot_map, is_thing, num_slots)
    stuff_area = _count_per_segment(semantic, is_stuff, self._num_classes)
    thing_survives = tf.logical_and(slot_is_thing, thing_area >= max(
        self._thing_area_limit, 1))
    stuff_survives = stuff_area >= self._stuff_area_limit
    keep = tf.logical_or(
        tf.logical_and(is_thing, _gather_per_pixel(thing_survives, slot_map)),
        tf.logical_and(is_stuff, _gather_per_pixel(stuff_survives, semantic)))
    instance_of_slot = tf.where(
        thing_survives, tf.cumsum(tf.cast(thing_survives, tf.int32), axis=-1), 0)
    instance = tf.where(keep, _gather_per_pixel(instance_of_slot, slot_map), 0)
    void = common.IGNORE_LABEL * self._label_divisor
    panoptic = tf.where(keep, semantic * self._label_divisor + instance, void)
    slot_present = _count_per_segment(slot_map, keep, num_slots) > 0
    return {
        common.PANOPTIC_PRED: panoptic,
        common.SEMANTIC_PRED: tf.where(keep, semantic, common.IGNORE_LABEL),
        common.INSTANCE_PRED: instance,
        common.SEGMENT_PANOPTIC_IDS: tf.where(
            slot_present, slot_class * self._label_divisor + instance_of_slot, -1),
        common.SEGMENT_SCORES: tf.where(slot_present, slot_score, 0.0),
    }
