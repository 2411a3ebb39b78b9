"""Checks of an experiment's settings that need no data and no model.

`train_lib.run` calls `check_experiment` first, so a bad combination (an
interval that is not a multiple of `steps_per_loop`, a crop that breaks the
model's stride alignment, ...) is one error naming the setting, before any data
set or model is built (Orbit would only reject some of them after both exist).
"""
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.training import optimization

MIXED_PRECISION = (None, 'mixed_bfloat16', 'mixed_float16')


def check_experiment(config) -> None:
  """Raises ValueError naming the first bad `ExperimentConfig` setting.

  Args:
    config: an `experiment.ExperimentConfig`.
  """
  for name in ('train_batch_size', 'eval_batch_size', 'train_steps', 'steps_per_loop',
               'summary_interval', 'checkpoint_interval', 'eval_interval',
               'max_checkpoints', 'max_num_masks', 'gradient_accumulation_steps'):
    if getattr(config, name) < 1:
      raise ValueError(f'ExperimentConfig.{name} must be >= 1, got '
                       f'{getattr(config, name)}.')
  for name in ('summary_interval', 'checkpoint_interval'):
    if getattr(config, name) % config.steps_per_loop:
      raise ValueError(
          f'ExperimentConfig.{name}={getattr(config, name)} must be a multiple of '
          f'ExperimentConfig.steps_per_loop={config.steps_per_loop} (training stops '
          'for summaries and checkpoints only between loops).')
  if config.train_batch_size % config.gradient_accumulation_steps:
    raise ValueError(f'ExperimentConfig.gradient_accumulation_steps='
                     f'{config.gradient_accumulation_steps} must divide '
                     f'train_batch_size={config.train_batch_size}.')
  for name in ('train_crop_size', 'eval_crop_size'):
    pipeline.check_crop_size(getattr(config, name), flag=f'ExperimentConfig.{name}')
  if config.mixed_precision not in MIXED_PRECISION:
    raise ValueError(f'ExperimentConfig.mixed_precision={config.mixed_precision!r}: '
                     f'expected one of {MIXED_PRECISION}.')
  optimization.OptimizerConfig(train_steps=config.train_steps)  # Checks warm-up.
