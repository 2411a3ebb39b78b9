"""Tests of the paper-style parameter breakdown."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.modeling import parameter_count
from tests.modeling import cmt_test_utils


def test_breakdown_partitions_the_trainable_variables():
  model = cmt_test_utils.tiny_network()
  model(tf.zeros([1, 33, 33, 3]), training=True)
  counts = parameter_count.parameter_breakdown(model)
  everything = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  assert counts[parameter_count.INFERENCE_TOTAL] + counts[
      parameter_count.TRAINING_ONLY] == everything
  assert all(counts[c] > 0 for c in parameter_count.COMPONENTS)
  # The semantic head: 5x5 depthwise (+BN) over 32 channels, 1x1 32->32 (+BN),
  # 1x1 32->3 with bias; BN has gamma and beta.
  channels, hidden, classes = 32, 32, 3
  expected = (25 * channels + 2 * channels + channels * hidden + 2 * hidden +
              hidden * classes + classes)
  assert counts[parameter_count.TRAINING_ONLY] == expected
