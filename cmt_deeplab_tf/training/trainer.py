"""Orbit trainer and evaluator of panoptic mask transformers.

`PanopticTrainer` implements Orbit's `StandardTrainer` (a custom train step under
any `tf.distribute` strategy, optionally XLA-compiled) and `StandardEvaluator`
(model + in-graph post-processing per replica; PQ / SQ / RQ / mIoU accumulated on
the host). `orbit.Controller` drives it (see `train_lib`).
"""
import time
from typing import Callable, Dict, Optional

from absl import logging
import numpy as np
import orbit
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.training import optimization

LEARNING_RATE = 'learning_rate'

_EVAL_KEYS = (common.PANOPTIC, common.SEMANTIC, common.VALID_SIZE)
_PRED_KEYS = (common.PANOPTIC_PRED, common.SEMANTIC_PRED)
# Strings cannot leave a TPU replica: image ids travel only for a submission.
_SUBMISSION_KEYS = (common.ORIGINAL_SIZE, common.IMAGE_ID)


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or Inf."""


class PanopticTrainer(orbit.StandardTrainer, orbit.StandardEvaluator):
  """Trains and evaluates a model of `cmt_deeplab_tf.modeling.builder`."""

  def __init__(self,
               strategy: tf.distribute.Strategy,
               model: tf_keras.Model,
               loss_fn: panoptic_loss.PanopticLoss,
               optimizer_config: optimization.OptimizerConfig,
               post_processor: post_processing.PostProcessor,
               evaluator: panoptic_evaluator.PanopticEvaluator,
               train_dataset_fn: Optional[Callable] = None,
               eval_dataset_fn: Optional[Callable] = None,
               jit_compile: bool = False,
               prediction_callback: Optional[Callable[[Dict[str, np.ndarray]],
                                                      None]] = None):
    """Creates the trainer; must be called inside `strategy.scope()`.

    Args:
      strategy: the distribution strategy.
      model: the Keras model, every variable created (`train_lib.create_all_variables`).
      loss_fn: computes the named loss terms of a per-replica batch.
      optimizer_config: AdamW, schedule and backbone multiplier.
      post_processor: model outputs -> panoptic predictions (in graph).
      evaluator: accumulates PQ / mIoU on the host.
      train_dataset_fn, eval_dataset_fn: `input_context -> tf.data.Dataset`.
      jit_compile: compile the per-replica train step with XLA.
      prediction_callback: called on the host with every evaluated replica batch:
        NumPy arrays of the ground truth's PANOPTIC, SEMANTIC, VALID_SIZE,
        ORIGINAL_SIZE and IMAGE_ID and the predictions (e.g. to write a
        submission).
    """
    self.strategy = strategy
    self.model = model
    self.loss_fn = loss_fn
    self.post_processor = post_processor
    self.evaluator = evaluator
    self.prediction_callback = prediction_callback
    self.optimizer = optimization.build_optimizer(optimizer_config)
    self.backbone_optimizer = optimization.build_optimizer(
        optimizer_config, optimizer_config.backbone_learning_rate_multiplier)
    self.backbone_variables, self.other_variables = (
        optimization.split_backbone_variables(model))
    self.gradient_clip_norm = optimizer_config.gradient_clip_norm
    self.global_step = orbit.utils.create_global_step()
    self.loss_sums: Dict[str, tf.Variable] = {}
    with strategy.scope():
      self.loss_steps = tf.Variable(0.0, trainable=False, name='loss_steps')
    self._compute = (tf.function(self._losses_and_gradients, jit_compile=True)
                     if jit_compile else self._losses_and_gradients)
    self._progress = None
    self._total_steps = optimizer_config.train_steps
    train_dataset = eval_dataset = None
    if train_dataset_fn:
      train_dataset = strategy.distribute_datasets_from_function(train_dataset_fn)
    if eval_dataset_fn:
      eval_dataset = strategy.distribute_datasets_from_function(eval_dataset_fn)
    # Loss sums are created on the first trace, which a tf.while_loop forbids.
    orbit.StandardTrainer.__init__(
        self, train_dataset, options=orbit.StandardTrainerOptions(use_tf_while_loop=False))
    orbit.StandardEvaluator.__init__(
        self, eval_dataset,
        options=orbit.StandardEvaluatorOptions(use_tf_while_loop=False))

  def checkpoint_items(self) -> Dict[str, tf.Module]:
    """What a checkpoint holds: enough to resume exactly."""
    return {'model': self.model, 'optimizer': self.optimizer,
            'backbone_optimizer': self.backbone_optimizer, 'global_step': self.global_step}

  # ---- Training. ----

  def _accumulate(self, losses: Dict[str, tf.Tensor]) -> None:
    """Adds a step's replica-reduced losses to the running sums (cross-replica)."""
    if not self.loss_sums:  # First trace: one variable per loss term, made eagerly.
      with tf.init_scope(), self.strategy.scope():
        self.loss_sums.update({name: tf.Variable(0.0, trainable=False,
                                                 name=name.replace('/', '_'))
                               for name in losses})
    for name, value in losses.items():
      self.loss_sums[name].assign_add(value)
    self.loss_steps.assign_add(1.0)

  def loss_averages(self) -> Dict[str, float]:
    """Mean of each loss term over the steps since the last `train_loop_begin`."""
    steps = max(float(self.loss_steps.numpy()), 1.0)
    return {name: float(total.numpy()) / steps for name, total in self.loss_sums.items()}

  def _losses_and_gradients(self, features):
    with tf.GradientTape() as tape:
      outputs = self.model(features[common.IMAGE], training=True)
      losses = self.loss_fn(features, outputs)
    gradients = tape.gradient(losses[panoptic_loss.TOTAL],
                              self.backbone_variables + self.other_variables)
    return losses, gradients

  def _replica_step(self, features):
    # Strings (image ids) cannot enter an XLA cluster and the loss does not use them.
    features = {k: v for k, v in features.items() if v.dtype != tf.string}
    losses, gradients = self._compute(features)
    if self.gradient_clip_norm:
      gradients, _ = tf.clip_by_global_norm(gradients, self.gradient_clip_norm)
    # Losses are divided by the GLOBAL batch size, and the optimizers sum the
    # gradients over replicas: the update is that of the global mean.
    num_backbone = len(self.backbone_variables)
    if num_backbone:
      self.backbone_optimizer.apply_gradients(
          zip(gradients[:num_backbone], self.backbone_variables))
    self.optimizer.apply_gradients(zip(gradients[num_backbone:], self.other_variables))
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    return {name: value * replicas for name, value in losses.items()}

  def train_loop_begin(self):
    for variable in list(self.loss_sums.values()) + [self.loss_steps]:
      variable.assign(0.0)
    if self._progress is None:
      self._progress = (time.time(), int(self.global_step.numpy()))

  def train_step(self, iterator):
    losses = self.strategy.run(self._replica_step, args=(next(iterator),))
    self._accumulate({name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                      for name, value in losses.items()})
    self.global_step.assign_add(1)

  def train_loop_end(self) -> Dict[str, float]:
    results = self.loss_averages()
    step = int(self.global_step.numpy())
    check_finite(results, step)
    results[LEARNING_RATE] = float(self.optimizer.learning_rate(self.optimizer.iterations)
                                   if callable(self.optimizer.learning_rate)
                                   else self.optimizer.learning_rate)
    start_time, start_step = self._progress
    rate = (step - start_step) / max(time.time() - start_time, 1e-9)
    remaining = (self._total_steps - step) / rate if rate > 0 else float('inf')
    logging.info('step %d/%d (%.0f%%), %.2f steps/s, ETA %s, total loss %.4f', step,
                 self._total_steps, 100.0 * step / self._total_steps, rate,
                 _format_seconds(remaining), results.get(panoptic_loss.TOTAL, float('nan')))
    return results

  # ---- Evaluation. ----

  def eval_begin(self):
    self.evaluator.reset()
    return None

  def eval_step(self, iterator):
    def replica_step(features):
      outputs = self.model(features[common.IMAGE], training=False)
      # Thresholds count only the image's own pixels, as in serving (not the padding).
      predictions = self.post_processor(outputs, features[common.IMAGE].shape[1:3],
                                        features[common.VALID_SIZE])
      keys = _EVAL_KEYS + (_SUBMISSION_KEYS if self.prediction_callback else ())
      result = {key: features[key] for key in keys}
      result.update({key: predictions[key] for key in _PRED_KEYS})
      return result
    return self.strategy.run(replica_step, args=(next(iterator),))

  def eval_reduce(self, state=None, step_outputs=None):
    local = {key: self.strategy.experimental_local_results(value)
             for key, value in step_outputs.items()}
    for replica in range(len(local[common.PANOPTIC])):
      batch = {key: np.asarray(values[replica]) for key, values in local.items()}
      self.evaluator.update(batch, batch)
      if self.prediction_callback:
        self.prediction_callback(batch)
      if state is None:  # Keep one batch for the image summaries.
        state = batch
    return state

  def eval_end(self, state=None):
    results = self.evaluator.result()
    self.last_eval_results = results
    self.last_eval_batch = state
    return {key: value for key, value in results.items() if np.isscalar(value)}


def check_finite(losses: Dict[str, float], step: int) -> None:
  """Stops training on a NaN or Inf loss term, naming it."""
  for name, value in sorted(losses.items()):
    if not np.isfinite(value):
      raise NonFiniteLossError(f'Loss term {name!r} is {value} at step {step}; '
                               'stopping before a checkpoint is written.')


def _format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'
