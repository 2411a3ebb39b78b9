"""One training step with and without recompute under MirroredStrategy (2 CPUs).

A separate process (`test_recompute.py` runs it), since logical devices must be
set before TensorFlow starts. Prints 'same step on 2 replicas' when loss,
gradients and moving statistics agree.
"""
import os
import sys

import tensorflow as tf


def main():
  sys.path.insert(0, os.getcwd())
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  from tests.modeling import test_recompute  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    model = test_recompute.tiny_model()
  batch = cost.random_training_batch(test_recompute.SIZE, test_recompute.SIZE,
                                     test_recompute.NUM_CLASSES, test_recompute.NUM_CLUSTERS)
  second = cost.random_training_batch(test_recompute.SIZE, test_recompute.SIZE,
                                      test_recompute.NUM_CLASSES,
                                      test_recompute.NUM_CLUSTERS, seed=1)
  batch = {k: tf.concat([v, second[k]], 0) for k, v in batch.items()}
  stored = test_recompute.one_step(model, batch, False, strategy=strategy)
  recomputed = test_recompute.one_step(model, batch, True, strategy=strategy)
  test_recompute.assert_same_steps(model, stored, recomputed)
  print(f'same step on {strategy.num_replicas_in_sync} replicas')


if __name__ == '__main__':
  main()
