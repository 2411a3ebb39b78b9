"""Shared helpers of the transformer / model tests."""
import ast
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.modeling import cmt_deeplab
from cmt_deeplab_tf.modeling.backbones import axial_resnet

TINY_WIDTH = 0.125


def tiny_backbone(stage5_blocks=1):
  """A ~0.2M-parameter Axial-ResNet (widths / 8, one block per stage)."""
  return axial_resnet.AxialResNet(
      num_blocks=(1, 1, 1, stage5_blocks), width_multiplier=TINY_WIDTH,
      drop_path_rate=0.0)


def tiny_network(num_classes=3, num_clusters=4, **kwargs):
  """A tiny CMT-DeepLab network (widths / 8, one decoder block per stage)."""
  return cmt_deeplab.build_network(
      tiny_backbone(), num_classes, num_clusters, (1, 1, 1),
      width_multiplier=TINY_WIDTH, **kwargs)


def activate_residual_branches(layer, gamma=1.0):
  """Sets every batch-norm gamma to `gamma` and beta to a small random value.

  The last BN of each residual branch starts at gamma = 0 (identity blocks);
  tests that need the branches to act call this after building.
  """
  rng = np.random.default_rng(0)
  for variable in layer.weights:
    if variable.name.endswith('gamma:0'):
      variable.assign(gamma * tf.ones_like(variable))
    elif variable.name.endswith('beta:0'):
      variable.assign(0.1 * rng.standard_normal(variable.shape).astype(
          variable.dtype.as_numpy_dtype))


def sum_of_outputs(outputs):
  """A scalar touching every float tensor of a (nested) output structure."""
  return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32) * 1e-3)
                   for t in tf.nest.flatten(outputs)])


def python_literal_of_script(script):
  """Runs `script` in a fresh Python (e.g. one that sets up logical devices
  before TensorFlow starts) and returns the literal its last line prints."""
  result = subprocess.run(
      [sys.executable, '-c', script], capture_output=True, text=True,
      check=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  return ast.literal_eval(result.stdout.strip().splitlines()[-1])
