r"""A short deterministic train_and_eval run of the tiny model, in its own process.

Op determinism is process-wide, so the determinism tests run each training here:

  python tests/training/repeat_run.py --records=DIR --model_dir=DIR --seed=0 \
      [--steps=3] [--sigterm_after_step=1] [--in_graph_loop] [--steps_per_loop=1]

With --sigterm_after_step=s the process sends itself SIGTERM when step s is done:
training checkpoints the next step and exits with status 143, as a preempted job;
run it again without the flag to resume.
"""
import os
import signal
import sys

from absl import app
from absl import flags
import gin

FLAGS = flags.FLAGS
flags.DEFINE_string('records', None, 'Folder with synthetic train-* / val-* shards.')
flags.DEFINE_string('model_dir', None, 'Model dir.')
flags.DEFINE_integer('seed', 0, 'ExperimentConfig.seed.')
flags.DEFINE_integer('steps', 3, 'Training steps (one evaluation at the end).')
flags.DEFINE_bool('in_graph_loop', False, 'ExperimentConfig.in_graph_loop.')
flags.DEFINE_integer('steps_per_loop', 1, 'ExperimentConfig.steps_per_loop (also the '
                     'summary interval).')
flags.DEFINE_integer('sigterm_after_step', 0, 'Send SIGTERM to this process after this '
                     'step (0: never).')


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from cmt_deeplab_tf.training import experiment
  from cmt_deeplab_tf.training import train_lib
  from cmt_deeplab_tf.training import trainer as trainer_lib
  for binding in ("build_model.name = 'tiny'", 'build_model.num_clusters = 8',
                  'OptimizerConfig.warmup_steps = 1',
                  # Drop path draws on every step (the tiny model has none by default).
                  'PixelDecoder.drop_path_rate = 0.2', 'TransformerDecoder.drop_path_rate = 0.2',
                  'instance_discrimination_loss.sample_k = 64'):
    gin.parse_config(binding)
  if FLAGS.sigterm_after_step:
    loop_end = trainer_lib.PanopticTrainer.train_loop_end

    def train_loop_end(trainer):
      if int(trainer.global_step.numpy()) == FLAGS.sigterm_after_step:
        os.kill(os.getpid(), signal.SIGTERM)
      return loop_end(trainer)
    trainer_lib.PanopticTrainer.train_loop_end = train_loop_end
  config = experiment.ExperimentConfig(
      dataset_name='synthetic', train_file_pattern=os.path.join(FLAGS.records, 'train-*'),
      eval_file_pattern=os.path.join(FLAGS.records, 'val-*'), train_batch_size=2,
      eval_batch_size=2, train_crop_size=(65, 65), eval_crop_size=(97, 97),
      max_num_masks=12, train_steps=FLAGS.steps, steps_per_loop=FLAGS.steps_per_loop,
      summary_interval=FLAGS.steps_per_loop,
      checkpoint_interval=FLAGS.steps, eval_interval=FLAGS.steps, seed=FLAGS.seed,
      deterministic=True, in_graph_loop=FLAGS.in_graph_loop)
  train_lib.run('train_and_eval', FLAGS.model_dir, tf.distribute.get_strategy(), config)


if __name__ == '__main__':
  flags.mark_flags_as_required(['records', 'model_dir'])
  app.run(main)
