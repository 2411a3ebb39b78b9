"""`post_processing.PostProcessor` in NumPy, for runtimes without TensorFlow.

TFLite and ONNX files hold the network only (class and mask logits): the
post-processing's data-dependent loop and segment sums do not convert. This module
repeats it step for step in float32 with NumPy alone, so a TFLite or ONNX Runtime
deployment needs no TensorFlow. The maps equal the TF post-processor's
(`tests/serving/test_post_processing_numpy.py`); scores may differ in the last bit (the
two libraries' `exp`).

Serving post-processes whole images (no `valid_size`); see `PostProcessor` for
the definitions of both methods and every setting.
"""
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from cmt_deeplab_tf import common

_MASKED_LOGIT = np.float32(-1e9)


def _softmax(logits: np.ndarray) -> np.ndarray:
  """float32 softmax over the last axis."""
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)


def upsample_mask_logits(mask_logits: np.ndarray, output_size: Tuple[int, int],
                         stride: int = 4) -> np.ndarray:
  """`post_processing.upsample_mask_logits`: [B, h, w, N] -> float32 [B, H, W, N]."""
  def interpolate(x, axis, out_len):
    in_len = x.shape[axis]
    position = np.arange(out_len, dtype=np.float32) / np.float32(stride)
    low = np.minimum(np.floor(position).astype(np.int32), in_len - 1)
    high = np.minimum(low + 1, in_len - 1)
    frac = (position - low.astype(np.float32)).reshape([-1] + [1] * (3 - axis))
    return (np.take(x, low, axis=axis) * (np.float32(1.0) - frac) +
            np.take(x, high, axis=axis) * frac)

  mask_logits = np.asarray(mask_logits, np.float32)
  return interpolate(interpolate(mask_logits, 1, output_size[0]), 2, output_size[1])


def _gather_per_pixel(per_slot: np.ndarray, slot_map: np.ndarray) -> np.ndarray:
  """[B, N] values, [B, H, W] indices -> [B, H, W]."""
  return np.take_along_axis(per_slot, slot_map.reshape(len(slot_map), -1),
                            axis=1).reshape(slot_map.shape)


def _count_per_segment(segment_ids: np.ndarray, include: np.ndarray,
                       num_segments: int) -> np.ndarray:
  """int32 [B, S]: per image, the included pixels of each segment id 0..S-1."""
  return np.stack([np.bincount(ids[keep], minlength=num_segments)
                   for ids, keep in zip(segment_ids, include)]).astype(np.int32)


class PostProcessor:
  """Post-processes CLASS_LOGITS and MASK_LOGITS into panoptic predictions."""

  def __init__(self, is_thing: Sequence[bool], label_divisor: int,
               method: str = 'pixelwise', thing_class_threshold: float = 0.7,
               stuff_class_threshold: float = 0.7,
               pixel_confidence_threshold: float = 0.4, thing_area_limit: int = 100,
               stuff_area_limit: int = 1600, overlap_threshold: float = 0.5,
               reorder_class_weight: float = 1.0, reorder_mask_weight: float = 0.0,
               semantic_without_thresholds: bool = True, output_stride: int = 4):
    """Takes the arguments of `post_processing.PostProcessor` (same defaults)."""
    if method not in ('pixelwise', 'maskwise'):
      raise ValueError(f"method must be 'pixelwise' or 'maskwise', got {method!r}")
    self._is_thing = np.asarray(is_thing, bool)
    self._label_divisor = label_divisor
    self._method = method
    self._thing_class_threshold = np.float32(thing_class_threshold)
    self._stuff_class_threshold = np.float32(stuff_class_threshold)
    self._pixel_confidence_threshold = np.float32(pixel_confidence_threshold)
    self._thing_area_limit = thing_area_limit
    self._stuff_area_limit = stuff_area_limit
    self._overlap_threshold = np.float32(overlap_threshold)
    self._reorder_class_weight = np.float32(reorder_class_weight)
    self._reorder_mask_weight = np.float32(reorder_mask_weight)
    self._semantic_without_thresholds = semantic_without_thresholds
    self._output_stride = output_stride

  def __call__(self, outputs: Mapping[str, np.ndarray],
               output_size: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Post-processes one batch.

    Args:
      outputs: common.CLASS_LOGITS float32 [B, N, C + 1] and MASK_LOGITS
        [B, h, w, N].
      output_size: (H, W) of the maps.

    Returns:
      PANOPTIC_PRED, SEMANTIC_PRED, INSTANCE_PRED (int32 [B, H, W]),
      SEGMENT_PANOPTIC_IDS (int32 [B, N]), SEGMENT_SCORES (float32 [B, N]).
    """
    class_logits = np.asarray(outputs[common.CLASS_LOGITS], np.float32)
    num_classes = len(self._is_thing)
    if class_logits.shape[-1] != num_classes + 1:
      raise ValueError(f'CLASS_LOGITS must have {num_classes + 1} channels '
                       f'(classes + no-object), got shape {class_logits.shape}')
    class_probs = _softmax(class_logits)[..., :num_classes]
    slot_class = class_probs.argmax(axis=-1).astype(np.int32)
    slot_score = class_probs.max(axis=-1)
    slot_is_thing = self._is_thing[slot_class]
    slot_kept = slot_score >= np.where(slot_is_thing, self._thing_class_threshold,
                                       self._stuff_class_threshold)
    mask_logits = upsample_mask_logits(outputs[common.MASK_LOGITS], output_size,
                                       self._output_stride)
    if self._method == 'pixelwise':
      slot_map, assigned = self._pixelwise_assignment(mask_logits, slot_kept)
    else:
      slot_map, assigned = self._maskwise_assignment(mask_logits, slot_kept, slot_score)
    predictions = self._panoptic_maps(slot_map, assigned, slot_class, slot_score,
                                      slot_is_thing)
    if self._semantic_without_thresholds:
      predictions[common.SEMANTIC_PRED] = _gather_per_pixel(
          slot_class, mask_logits.argmax(axis=-1).astype(np.int32))
    return predictions

  def _pixelwise_assignment(self, mask_logits, slot_kept):
    kept_logits = np.where(slot_kept[:, np.newaxis, np.newaxis, :], mask_logits,
                           _MASKED_LOGIT)
    confidence = _softmax(kept_logits).max(axis=-1)
    slot_map = mask_logits.argmax(axis=-1).astype(np.int32)
    assigned = (_gather_per_pixel(slot_kept, slot_map) &
                (confidence > self._pixel_confidence_threshold))
    return slot_map, assigned

  def _maskwise_assignment(self, mask_logits, slot_kept, slot_score):
    probs = _softmax(mask_logits)
    binary = probs > self._pixel_confidence_threshold
    binary_float = binary.astype(np.float32)
    binary_area = binary_float.sum(axis=(1, 2))
    with np.errstate(divide='ignore', invalid='ignore'):
      mask_score = np.where(binary_area > 0,
                            (probs * binary_float).sum(axis=(1, 2)) / binary_area,
                            np.float32(0))
    order_score = (slot_score ** self._reorder_class_weight *
                   mask_score.astype(np.float32) ** self._reorder_mask_weight)
    order = np.argsort(-order_score, axis=-1, kind='stable')
    canvas = np.full(mask_logits.shape[:3], -1, np.int32)
    for b, image_order in enumerate(order):
      for slot in image_order:
        free = binary[b, ..., slot] & (canvas[b] < 0)
        if (slot_kept[b, slot] and np.float32(free.sum()) >
            self._overlap_threshold * binary_area[b, slot]):
          canvas[b][free] = slot
    return np.maximum(canvas, 0), canvas >= 0

  def _panoptic_maps(self, slot_map, assigned, slot_class, slot_score, slot_is_thing):
    num_slots = slot_class.shape[-1]
    semantic = _gather_per_pixel(slot_class, slot_map)
    is_thing = assigned & _gather_per_pixel(slot_is_thing, slot_map)
    is_stuff = assigned & ~is_thing
    thing_area = _count_per_segment(slot_map, is_thing, num_slots)
    stuff_area = _count_per_segment(semantic, is_stuff, len(self._is_thing))
    thing_survives = slot_is_thing & (thing_area >= max(self._thing_area_limit, 1))
    stuff_survives = stuff_area >= self._stuff_area_limit
    keep = ((is_thing & _gather_per_pixel(thing_survives, slot_map)) |
            (is_stuff & _gather_per_pixel(stuff_survives, semantic)))
    instance_of_slot = np.where(
        thing_survives, np.cumsum(thing_survives, axis=-1, dtype=np.int32), 0)
    instance = np.where(keep, _gather_per_pixel(instance_of_slot, slot_map), 0)
    void = common.IGNORE_LABEL * self._label_divisor
    panoptic = np.where(keep, semantic * self._label_divisor + instance, void)
    slot_present = _count_per_segment(slot_map, keep, num_slots) > 0
    return {
        common.PANOPTIC_PRED: panoptic.astype(np.int32),
        common.SEMANTIC_PRED: np.where(keep, semantic, common.IGNORE_LABEL).astype(np.int32),
        common.INSTANCE_PRED: instance.astype(np.int32),
        common.SEGMENT_PANOPTIC_IDS: np.where(
            slot_present, slot_class * self._label_divisor + instance_of_slot,
            -1).astype(np.int32),
        common.SEGMENT_SCORES: np.where(slot_present, slot_score,
                                        np.float32(0)).astype(np.float32),
    }
