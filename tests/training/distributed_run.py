r"""Trains the tiny model for a few steps under a strategy; saves the final weights.

Run as a separate process by the distribution tests, because logical devices and
TF_CONFIG must be set before TensorFlow initialises:

  python tests/training/distributed_run.py --strategy=mirrored --records=DIR \
      --model_dir=DIR --weights=out.npz [--steps=3]
"""
import json
import os
import sys

from absl import app
from absl import flags
import gin
import numpy as np
import tensorflow as tf

FLAGS = flags.FLAGS
flags.DEFINE_enum('strategy', 'one_device',
                  ['one_device', 'mirrored', 'multi_worker_mirrored'], 'Strategy.')
flags.DEFINE_string('records', None, 'Folder with synthetic train-* / val-* shards.')
flags.DEFINE_string('model_dir', None, 'Model dir.')
flags.DEFINE_string('weights', None, 'Where to save the final trainable weights (.npz).')
flags.DEFINE_integer('steps', 3, 'Training steps.')
flags.DEFINE_integer('checkpoint_interval', 100, 'Checkpoint every this many steps.')
flags.DEFINE_integer('global_batch_size', 4, 'Global batch size.')
flags.DEFINE_string('init_checkpoint', None, 'Initial weights (same for every run).')


def configure_tiny_run():
  """The gin bindings of every distributed test run (tiny model, fixed data)."""
  for binding in ("build_model.name = 'tiny'", 'build_model.num_clusters = 8',
                  'OptimizerConfig.warmup_steps = 1', 'panoptic_dataset.deterministic = True',
                  # Adam divides by sqrt(v) + epsilon: with the default 1e-6 a weight whose
                  # gradient is ~0 moves +-lr on float summation noise alone; epsilon 1
                  # keeps every update proportional to its gradient, so replica and
                  # single-device runs can be compared to float32 summation order.
                  'OptimizerConfig.epsilon = 1.0',
                  'panoptic_dataset.min_scale = 1.0', 'panoptic_dataset.max_scale = 1.0'):
    gin.parse_config(binding)


def _strategy():
  if FLAGS.strategy == 'mirrored':
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  if FLAGS.strategy == 'multi_worker_mirrored':
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.OneDeviceStrategy('/cpu:0')


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  from cmt_deeplab_tf.training import experiment  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  strategy = _strategy()
  configure_tiny_run()
  config = experiment.ExperimentConfig(
      dataset_name='synthetic', train_file_pattern=os.path.join(FLAGS.records, 'train-*'),
      train_batch_size=FLAGS.global_batch_size, train_crop_size=(97, 97), max_num_masks=12,
      train_steps=FLAGS.steps, steps_per_loop=1, summary_interval=1,
      checkpoint_interval=FLAGS.checkpoint_interval, seed=0,
      init_checkpoint=FLAGS.init_checkpoint)
  trainer = train_lib.run('train', FLAGS.model_dir, strategy, config, return_trainer=True)
  weights = {v.name: v.numpy() for v in trainer.model.trainable_variables}
  np.savez(FLAGS.weights, **weights)
  print(json.dumps({'step': int(trainer.global_step.numpy()),
                    'replicas': strategy.num_replicas_in_sync}))


if __name__ == '__main__':
  flags.mark_flags_as_required(['records', 'model_dir', 'weights'])
  app.run(main)
