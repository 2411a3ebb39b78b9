r"""Trains and evaluates CMT-DeepLab / MaX-DeepLab models.

  python -m cmt_deeplab_tf.train --mode=train_and_eval --model_dir=runs/cmt_s \
      --gin_file=coco/cmt_deeplab_s.gin \
      --gin_param="ClusteringTransformerLayer.update_pixels=False" \
      --strategy=mirrored --num_gpus=8

Strategies: one_device (CPU or one GPU), mirrored (GPUs of one machine),
multi_worker_mirrored (several machines; set TF_CONFIG on each), tpu (--tpu=NAME).

--gin_file takes a path or the name of a shipped config; --list_configs lists
the shipped configs with the paper row each reproduces.

A model dir that holds a run is the record of it: its training config (data
paths included) is the starting point, and --gin_file / --gin_param change only
what they name, so `--mode=eval --model_dir=D` evaluates run D as it was
trained. A resume that changes a model binding is refused, naming it. Nothing in
the model dir is overwritten: a step evaluated again gets a numbered results
file; continuous_eval skips steps already evaluated and ends after train_steps.
With --deterministic (and a seed), the run is bitwise repeatable on one machine,
across preemptions.

With --submission_format=coco|cityscapes, every evaluation also writes its
predictions in that benchmark's layout to <model_dir>/eval/submission-<step>/.
"""
from absl import app
from absl import flags
from absl import logging

from cmt_deeplab_tf import cli
from cmt_deeplab_tf import config_files
from cmt_deeplab_tf.evaluation import submission
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import train_lib
from official.common import distribute_utils

STRATEGIES = ('one_device', 'mirrored', 'multi_worker_mirrored', 'tpu')


def _define_flags():
  flags.DEFINE_multi_string('gin_file', [], 'Gin config files (paths, or names of '
                            'shipped configs such as coco/cmt_deeplab_s.gin), '
                            'applied in order.')
  flags.DEFINE_bool('list_configs', False, 'Print the shipped configs with their '
                    'paper rows and exit.')
  flags.DEFINE_multi_string('gin_param', [], 'Gin bindings, applied after the files.')
  flags.DEFINE_string('model_dir', None, 'Checkpoints, summaries and results.')
  flags.DEFINE_enum('mode', 'train_and_eval', train_lib.MODES, 'What to run.')
  flags.DEFINE_enum('strategy', 'one_device', STRATEGIES, 'Distribution strategy.')
  flags.DEFINE_string('tpu', None, 'TPU name or address (with --strategy=tpu).')
  flags.DEFINE_integer('num_gpus', 0, 'GPUs to use (one_device / mirrored).')
  flags.DEFINE_boolean('deterministic', None,
                       'Bitwise-repeatable run: sets ExperimentConfig.deterministic '
                       '(needs ExperimentConfig.seed) over the gin files.')
  flags.DEFINE_enum('submission_format', None, submission.FORMATS,
                    'With an evaluating mode: also write the predictions as a COCO or '
                    'Cityscapes submission (PNG folder + JSON) per evaluation.')


def make_strategy(name: str, num_gpus: int = 0, tpu: str = None):
  """A `tf.distribute` strategy from its flag value, via Model Garden."""
  if name == 'tpu' and not tpu:
    raise ValueError('--strategy=tpu needs --tpu.')
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=name, num_gpus=num_gpus, tpu_address=tpu)


def print_configs() -> None:
  """Prints every shipped config's name and description (its paper row)."""
  for name, description in config_files.list_configs():
    print(f'{name}\n    {description}')


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.list_configs:
    print_configs()
    return
  if not FLAGS.model_dir:
    raise app.UsageError('--model_dir is required.')
  params = list(FLAGS.gin_param)
  if FLAGS.deterministic is not None:
    params.append(f'ExperimentConfig.deterministic = {FLAGS.deterministic}')
  experiment.parse_gin(FLAGS.gin_file, params, FLAGS.model_dir)
  strategy = make_strategy(FLAGS.strategy, FLAGS.num_gpus, FLAGS.tpu)
  logging.info('Strategy %s with %d replicas.', type(strategy).__name__,
               strategy.num_replicas_in_sync)
  train_lib.run(FLAGS.mode, FLAGS.model_dir, strategy,
                submission_format=FLAGS.submission_format)


def run():
  _define_flags()
  cli.run_main(main)


if __name__ == '__main__':
  run()
