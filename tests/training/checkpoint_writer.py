r"""Saves checkpoints in a loop, resuming from the newest good one.

  python -m tests.training.checkpoint_writer --directory=DIR [--steps=N]

The checkpoint holds 24 variables of 4 MB each (written in about 0.1-0.3 s
here, so a kill at a random moment often lands in a save), without Keras so
that a restart costs little more than importing TensorFlow. Every variable of
checkpoint `ckpt-<s>` is filled with the value s, so a checkpoint is complete
exactly when every tensor reads back as its step. Prints
`saved <s>` after each save. Used by the kill tests of `test_checkpointing.py`.
"""
from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf.training import checkpointing

flags.DEFINE_string('directory', None, 'Checkpoint directory.')
flags.DEFINE_integer('steps', 1000, 'Save until this step.')


def variables_checkpoint():
  variables = [tf.Variable(tf.zeros([1024, 1024])) for _ in range(24)]
  step = tf.Variable(0, dtype=tf.int64)
  return tf.train.Checkpoint(model=variables, global_step=step), variables, step


def main(argv):
  del argv
  directory = flags.FLAGS.directory
  checkpoint, variables, step = variables_checkpoint()
  latest = checkpointing.recover_latest(directory)
  manager = checkpointing.CheckpointManager(checkpoint, directory, max_to_keep=3,
                                            step_counter=step, checkpoint_interval=1,
                                            restore_from=latest)
  manager.restore_or_initialize()
  print(f'resumed {int(step.numpy())}', flush=True)
  while step.numpy() < flags.FLAGS.steps:
    step.assign_add(1)
    for variable in variables:
      variable.assign(tf.fill(variable.shape, tf.cast(step, variable.dtype)))
    manager.save(int(step.numpy()))
    print(f'saved {int(step.numpy())}', flush=True)


if __name__ == '__main__':
  flags.mark_flag_as_required('directory')
  app.run(main)
