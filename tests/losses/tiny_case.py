"""A 2x3 hand-made ground truth shared by the loss tests (stride 1).

Row 0 is ground-truth mask 0 (class 2); two pixels of row 1 are mask 1 (class 0);
the last pixel is void; slot 2 is padding.
"""
import numpy as np

from cmt_deeplab_tf import common
from cmt_deeplab_tf.losses import loss_targets

NUM_CLASSES = 3
MASK_INDEX = np.array([[[0, 0, 0], [1, 1, -1]]], np.int32)
SEMANTIC = np.array([[[2, 2, 2], [0, 0, 255]]], np.int32)
GT_CLASSES = np.array([[2, 0, NUM_CLASSES]], np.int32)
GT_VALID = np.array([[1, 1, 0]], np.float32)
FLAT_MASK_INDEX = MASK_INDEX[0].reshape(6)
VALID = FLAT_MASK_INDEX >= 0


def raw_targets():
  return {common.MASK_INDEX: MASK_INDEX,
          common.PIXEL_WEIGHT: VALID.reshape(1, 2, 3).astype(np.float32),
          common.SEMANTIC: SEMANTIC,
          common.GT_CLASSES: GT_CLASSES, common.GT_VALID: GT_VALID,
          common.GT_IS_THING: np.array([[0, 1, 0]], np.float32)}


def targets():
  return loss_targets.prepare_loss_targets(raw_targets(), NUM_CLASSES, stride=1)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)
