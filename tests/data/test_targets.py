"""Tests of the MaX-DeepLab target builder on hand-made labels."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import targets

# Classes: 0 = thing, 1 = stuff. Divisor 10. Void = 255 * 10.
IS_THING = (True, False)
VOID = 2550


def _build(label, max_num_masks=4):
  out = targets.build_targets(tf.constant(label, tf.int32), IS_THING, 10, max_num_masks)
  return {k: v.numpy() for k, v in out.items()}


def test_hand_computed_case():
  label = np.array([[10, 10, 1, 1],
                    [10, VOID, 2, 0],      # 0 = thing class 0, instance 0 = crowd.
                    [12, 12, 0, 0]])
  out = _build(label)
  # Segments sorted by id: 1 (thing inst 1), 2 (thing inst 2), 10 (stuff), 12 (stuff?).
  # 12 // 10 = 1 (stuff), 10 // 10 = 1 (stuff); 1 and 2 are class 0 instances.
  np.testing.assert_array_equal(out[common.GT_CLASSES], [0, 0, 1, 1])
  np.testing.assert_array_equal(out[common.GT_VALID], [1, 1, 1, 1])
  np.testing.assert_array_equal(out[common.GT_IS_THING], [1, 1, 0, 0])
  np.testing.assert_array_equal(out[common.MASK_INDEX], [[2, 2, 0, 0],
                                                         [2, -1, 1, -1],
                                                         [3, 3, -1, -1]])
  np.testing.assert_array_equal(out[common.PIXEL_WEIGHT], out[common.MASK_INDEX] >= 0)
  np.testing.assert_array_equal(out[common.SEMANTIC], [[1, 1, 0, 0],
                                                       [1, 255, 0, 0],
                                                       [1, 1, 0, 0]])


def test_padding_slots_are_no_object_and_invalid():
  out = _build(np.array([[10, 10], [11, VOID]]), max_num_masks=5)
  np.testing.assert_array_equal(out[common.GT_CLASSES], [1, 1, 2, 2, 2])
  np.testing.assert_array_equal(out[common.GT_VALID], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(out[common.GT_IS_THING], [0, 0, 0, 0, 0])


def test_too_many_segments_keeps_the_largest_and_ignores_the_rest():
  label = np.array([[1, 1, 1, 2, 2, 3],
                    [1, 1, 4, 4, 4, 4]])
  out = _build(label, max_num_masks=2)    # Areas: 1 -> 5, 2 -> 2, 3 -> 1, 4 -> 4.
  np.testing.assert_array_equal(out[common.GT_VALID], [1, 1])
  np.testing.assert_array_equal(out[common.MASK_INDEX] == 0, label == 1)
  np.testing.assert_array_equal(out[common.MASK_INDEX] == 1, label == 4)
  np.testing.assert_array_equal(out[common.PIXEL_WEIGHT], np.isin(label, [1, 4]))


def test_all_void_image_has_no_masks():
  out = _build(np.full((3, 3), VOID))
  assert out[common.GT_VALID].sum() == 0
  assert (out[common.MASK_INDEX] == -1).all()
  assert (out[common.SEMANTIC] == 255).all()
