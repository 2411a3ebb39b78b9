"""Stride-4 loss targets: strided sampling, masks, and masks lost to the stride."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.losses import loss_targets


def test_strided_targets_and_vanishing_masks():
  # 5x6 image -> 2x2 at stride 4 (rows 0, 4; columns 0, 4).
  mask_index = -np.ones((1, 5, 6), np.int32)
  mask_index[0, :, :4] = 0          # Mask 0 covers samples (0, 0) and (4, 0).
  mask_index[0, 0, 4] = 1           # Mask 1 covers sample (0, 4).
  mask_index[0, 1:3, 1:3] = 2       # Mask 2 falls between the samples.
  raw = {common.MASK_INDEX: mask_index,
         common.PIXEL_WEIGHT: (mask_index >= 0).astype(np.float32),
         common.SEMANTIC: np.where(mask_index >= 0, 1, 255).astype(np.int32),
         common.GT_CLASSES: np.array([[0, 2, 1, 3]], np.int32),
         common.GT_VALID: np.array([[1, 1, 1, 0]], np.float32)}
  targets = loss_targets.prepare_loss_targets(raw, num_classes=3)
  np.testing.assert_array_equal(targets.mask_index.numpy(), [[0, 1, 0, -1]])
  np.testing.assert_array_equal(targets.pixel_valid.numpy(), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(targets.semantic.numpy(), [[1, 1, 1, 255]])
  np.testing.assert_array_equal(targets.gt_area.numpy(), [[2, 1, 0, 0]])
  # Mask 2 has no pixel at stride 4: it becomes padding (no-object class).
  np.testing.assert_array_equal(targets.gt_valid.numpy(), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(targets.gt_classes.numpy(), [[0, 2, 3, 3]])
  np.testing.assert_array_equal(targets.gt_class_one_hot.numpy()[0],
                                [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(targets.gt_masks.numpy()[0].argmax(-1)[:3], [0, 1, 0])


def test_flatten_pixels_is_row_major():
  x = np.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4).astype(np.float32)
  np.testing.assert_array_equal(loss_targets.flatten_pixels(tf.constant(x)).numpy(),
                                x.reshape(2, 6, 4))
