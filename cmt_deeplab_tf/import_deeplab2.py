r"""Imports a DeepLab2 checkpoint into a run directory of this package.

  python -m cmt_deeplab_tf.import_deeplab2 \
      --checkpoint=max_deeplab_s_os16_res641_400k_coco_train/ckpt-400000 \
      --model_dir=runs/max_s_deeplab2 --gin_file=coco/max_deeplab_s.gin

Builds the model the gin configuration describes (`build_model`, with the
classes of the run's class table: `ExperimentConfig`'s shards or `dataset_name`), maps the checkpoint onto it
(`cmt_deeplab_tf.checkpoints.deeplab2`: DeepLab2's object-based layout, or Model
Garden's with `backbone/_encoder/`) and writes `--model_dir` as a run directory:
a checkpoint at step 0 (the model and the global step) and the operative gin
config and the class table. `train` resumes (fine-tunes) from it; `train --mode=eval`, `export`,
`predict` and `visualize` read it as any run. It prints how many variables it
mapped, how many checkpoint keys it skipped per reason (bookkeeping, optimizer
slots, training-only heads) and, per top module of the model, how many of our
variables keep their initial values (`--verbose`: every one of them); a shape
mismatch, an unknown layout or a checkpoint variable that maps nowhere stops it
with an error naming the variable.
"""
from absl import flags
from absl import logging
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.checkpoints import deeplab2
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import train_lib


def _define_flags():
  flags.DEFINE_string('checkpoint', None,
                      'DeepLab2 checkpoint prefix, e.g. .../ckpt-400000.')
  flags.DEFINE_string('model_dir', None, 'Run directory to write.')
  flags.DEFINE_multi_string('gin_file', [], 'Gin config files, applied in order.')
  flags.DEFINE_multi_string('gin_param', [],
                            'Gin bindings, applied after the files.')
  flags.DEFINE_enum('modules', deeplab2.ALL, deeplab2.MODULES,
                    'What to import: all the checkpoint holds, the backbone only, '
                    'or all but the class-logit layer (another class set).')
  flags.DEFINE_bool('verbose', False,
                    'List every mapped variable, skipped key and variable '
                    'that keeps its initial value.')


def import_checkpoint(checkpoint_path: str, model_dir: str,
                      modules: str = deeplab2.ALL) -> deeplab2.ImportPlan:
  """Writes `model_dir` with the configured model initialised from DeepLab2.

  Gin must be parsed (the model and the data set come from it).

  Returns:
    The executed `ImportPlan`.

  Raises:
    ValueError: If `model_dir` already holds a checkpoint, or on any mapping
      error (see `deeplab2.plan_import`).
  """
  train_lib.check_model_dir(model_dir)
  if tf.train.latest_checkpoint(model_dir):
    raise ValueError(f'--model_dir={model_dir} already holds a checkpoint; '
                     'import into a new directory.')
  checkpoint = deeplab2.DeepLab2Checkpoint(checkpoint_path)
  info = experiment.experiment_dataset_info(experiment.ExperimentConfig())
  strategy = tf.distribute.get_strategy()
  model = builder.build_model(num_classes=info.num_classes)
  task_lib.create_all_variables(model, strategy)  # Training-only heads too.
  plan = deeplab2.plan_import(model, checkpoint, modules)
  deeplab2.apply_plan(plan, checkpoint)
  global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
  tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, global_step=global_step), model_dir,
      max_to_keep=1).save(checkpoint_number=0)
  run_dir.record_training_config(model_dir, 0)
  run_dir.record_class_table(model_dir, info)
  return plan


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  experiment.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
  plan = import_checkpoint(FLAGS.checkpoint, FLAGS.model_dir, FLAGS.modules)
  print(deeplab2.summary(plan, verbose=FLAGS.verbose))
  logging.info('Imported %s (%s) into %s.', FLAGS.checkpoint, plan.layout,
               FLAGS.model_dir)


def run():
  _define_flags()
  flags.mark_flags_as_required(['checkpoint', 'model_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
