"""The panoptic segmentation task: what a run builds from its `ExperimentConfig`.

Shaped like Model Garden's `official/core/base_task.Task` (and its vision tasks):
the task knows the model, the inputs, the objective, the evaluation and how to
initialise from a checkpoint; it knows nothing of strategies' loops, checkpoint
managers or modes (`train_lib` runs them; `trainer.PanopticTrainer` holds the
train and eval steps). The class table (`experiment_dataset_info`) decides the
class count of the model, the loss and the evaluation.
"""
from typing import Optional

import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import init_checkpoint
from cmt_deeplab_tf.training import optimization


def create_all_variables(model: tf_keras.Model, strategy: tf.distribute.Strategy) -> None:
  """Creates every variable, training-only heads included, before the first step.

  Variables first created inside a traced, distributed train step cannot always be
  lifted out of it (MirroredStrategy fails), so one training-mode forward pass on
  zeros runs eagerly here; the batch-norm statistics it moved are put back (moving
  means to 0 and variances to 1 for the variables it created).
  """
  images = tf.zeros([1, 65, 65, 3])  # Any size builds the model.
  strategy.run(lambda: model(images, training=False))
  before = {id(v): v.numpy() for v in model.non_trainable_variables}
  strategy.run(lambda: model(images, training=True))
  for variable in model.non_trainable_variables:
    if id(variable) in before:
      variable.assign(before[id(variable)])
    elif 'moving_variance' in variable.name:
      variable.assign(tf.ones_like(variable))
    elif 'moving_mean' in variable.name:
      variable.assign(tf.zeros_like(variable))


class PanopticTask:
  """Builds the parts of a panoptic run; each `build_*` call makes a new one."""

  def __init__(self, config: experiment.ExperimentConfig,
               info: Optional[dataset_info_lib.DatasetInfo] = None):
    """Args: the experiment, and its class table (default: `experiment_dataset_info`)."""
    self.config = config
    self.info = info or experiment.experiment_dataset_info(config)

  def build_model(self) -> tf_keras.Model:
    """gin's `build_model` for the class table, every variable created (under the
    current strategy: call it inside `strategy.scope()`)."""
    return self._build_model_for(builder.num_classes_for(self.info.num_classes))

  def _build_model_for(self, num_classes: int) -> tf_keras.Model:
    model = builder.build_model(num_classes=num_classes)
    create_all_variables(model, tf.distribute.get_strategy())
    return model

  def build_inputs(self, is_training: bool,
                   input_context: Optional[tf.distribute.InputContext] = None,
                   start_step: int = 0) -> tf.data.Dataset:
    """The training data (micro-batches of [train_batch_size / accumulation,
    *train_crop_size, 3] images, endless, shuffled) or the evaluation data
    (batches of eval_batch_size at eval_crop_size, one pass).

    Args:
      is_training: which of the two.
      input_context: this input pipeline's part of a distributed run.
      start_step: the step a resumed run restores: training skips the
        micro-batches of the steps before.

    Raises:
      ValueError: naming the unset or empty file pattern.
    """
    config = self.config
    pattern = config.train_file_pattern if is_training else config.eval_file_pattern
    if config.tfds_source is None:
      if not pattern:
        flag = 'train_file_pattern' if is_training else 'eval_file_pattern'
        raise ValueError(f'ExperimentConfig.{flag} is not set.')
      pipeline.list_shards(pattern)  # Fails early, naming the pattern.
    return pipeline.panoptic_dataset(
        file_pattern=pattern, dataset_info=self.info, tfds_source=config.tfds_source,
        is_training=is_training,
        batch_size=(experiment.micro_batch_size(config) if is_training
                    else config.eval_batch_size),
        crop_size=config.train_crop_size if is_training else config.eval_crop_size,
        max_num_masks=config.max_num_masks, seed=config.seed,
        skip_batches=start_step * config.gradient_accumulation_steps if is_training else 0,
        input_context=input_context)

  def build_losses(self) -> panoptic_loss.PanopticLoss:
    """gin's `PanopticLoss` for the class table; every replica's loss is divided by
    the global batch (`train_batch_size`), so summed gradients are the mean's."""
    return panoptic_loss.PanopticLoss(num_classes=self.info.num_classes,
                                      global_batch_size=self.config.train_batch_size)

  def build_optimizer_config(self) -> optimization.OptimizerConfig:
    """gin's `OptimizerConfig`, its schedule as long as the run."""
    return optimization.OptimizerConfig(train_steps=self.config.train_steps)

  def build_post_processor(self) -> post_processing.PostProcessor:
    """Model outputs -> panoptic predictions of the class table's classes."""
    return post_processing.PostProcessor(self.info.is_thing, self.info.label_divisor)

  def build_metrics(self) -> panoptic_evaluator.PanopticEvaluator:
    """PQ / SQ / RQ / mIoU over the class table."""
    return panoptic_evaluator.PanopticEvaluator(self.info)

  def initialize(self, model: tf_keras.Model) -> None:
    """Loads `ExperimentConfig.init_checkpoint` into the model (if one is set).

    For a run without a checkpoint of its own; see `init_checkpoint`.
    """
    config = self.config
    if config.init_checkpoint:
      init_checkpoint.restore_init_checkpoint(
          model, config.init_checkpoint, config.init_checkpoint_modules,
          config.init_checkpoint_format, build_model=self._build_model_for)
