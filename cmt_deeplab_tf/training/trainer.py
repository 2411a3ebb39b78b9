"""Orbit trainer and evaluator of panoptic mask transformers.

`PanopticTrainer` implements Orbit's `StandardTrainer` (a custom train step under
any `tf.distribute` strategy) and `StandardEvaluator` (model + in-graph
post-processing per replica; PQ / SQ / RQ / mIoU accumulated on the host).
`orbit.Controller` drives it (see `train_lib`).

The train loop of `steps_per_loop` steps runs either in Python (one
`tf.function` call per step; a preemption stops it after any step) or in graph
(`in_graph_loop`: one `tf.function` holding a `tf.while_loop` over the steps,
no host round trip between steps; a preemption stops it at the end of the
loop). Both give the same updates. The running loss sums are variables made
before the first loop, from a trace of the loss (`_create_loss_sums`).

With `jit_compile`, XLA compiles each replica's whole update: forward pass,
matching, every loss term, gradients (recomputation included), clipping, the
float16 overflow check and both optimizers' updates; with gradient accumulation,
the per-micro-batch step (forward, backward, adding to the sums) and the update
from the sums are each one compiled function. Outside them stay what XLA cannot
take or the step does not need: string features (image ids) and the count of
skipped input records. Under (Multi-Worker) MirroredStrategy, whose optimizer
updates sum the replicas' gradients in Python threads, XLA compiles the forward
and backward pass only. (Under TPUStrategy, all of the step is XLA anyway.)

Fitting a step into memory:
- gradient accumulation: one train step (one optimizer update, one global step,
  one learning-rate step) sums the gradients of `gradient_accumulation_steps`
  micro-batches; batch norm normalises each micro-batch by its own statistics;
- `mixed_float16`: the loss is scaled before the backward pass and the gradients
  unscaled after it, with Keras' dynamic `LossScaleOptimizer`; an update whose
  gradients overflow is skipped (the scale halves) and counted in
  `skipped_updates`, logged at the end of the loop.
"""
import random
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
from cmt_deeplab_tf.modeling import random_draws
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import preemption

LEARNING_RATE = 'learning_rate'
LOSS_SCALE = 'loss_scale'
SKIPPED_UPDATES = 'skipped_updates'
SKIPPED_RECORDS = common.SKIPPED_RECORDS

_EVAL_KEYS = (common.PANOPTIC, common.SEMANTIC, common.VALID_SIZE)
_PRED_KEYS = (common.PANOPTIC_PRED, common.SEMANTIC_PRED)
# Their replica contexts sum across replicas (merge_call) in Python threads, which
# a function nested in the replica step (an XLA one) cannot enter.
_MERGE_IN_PYTHON = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
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
               in_graph_loop: bool = False,
               prediction_callback: Optional[Callable[[Dict[str, np.ndarray]],
                                                      None]] = None,
               gradient_accumulation_steps: int = 1,
               initial_loss_scale: Optional[float] = None,
               seed: Optional[int] = None):
    """Creates the trainer; must be called inside `strategy.scope()`.

    Args:
      strategy: the distribution strategy.
      model: the Keras model, every variable created (`task.create_all_variables`).
      loss_fn: computes the named loss terms of a per-replica batch.
      optimizer_config: AdamW, schedule and backbone multiplier.
      post_processor: model outputs -> panoptic predictions (in graph).
      evaluator: accumulates PQ / mIoU on the host.
      train_dataset_fn, eval_dataset_fn: `input_context -> tf.data.Dataset`.
      jit_compile: compile each replica's update with XLA (see the module doc).
      in_graph_loop: run the `steps_per_loop` steps of a train loop in one
        `tf.while_loop` (see the module doc) instead of a Python loop.
      prediction_callback: called on the host with every evaluated replica batch:
        NumPy arrays of the ground truth's PANOPTIC, SEMANTIC, VALID_SIZE,
        ORIGINAL_SIZE and IMAGE_ID and the predictions (e.g. to write a
        submission).
      gradient_accumulation_steps: micro-batches per optimizer update; the
        train dataset yields micro-batches.
      initial_loss_scale: first dynamic loss scale under `mixed_float16`
        (default: Keras' 2 ** 15); unused otherwise.
      seed: the run's seed; the random draws of a step (`random_draws`) are
        functions of it and the step. None: a random one.

    Raises:
      ValueError: on `gradient_accumulation_steps` < 1.
    """
    if gradient_accumulation_steps < 1:
      raise ValueError('ExperimentConfig.gradient_accumulation_steps must be >= 1, got '
                       f'{gradient_accumulation_steps}.')
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
    # Model Garden's AdamW logs its own gradient_clip_norm, 0: it does not clip.
    logging.info('Gradient clipping: %s, applied in the train step over the gradients '
                 'of all variables.', f'global norm {self.gradient_clip_norm:g}'
                 if self.gradient_clip_norm else 'off')
    self.gradient_accumulation_steps = gradient_accumulation_steps
    self.seed = random.randrange(2**31) if seed is None else seed
    self.loss_scaling = tf_keras.mixed_precision.global_policy().compute_dtype == 'float16'
    if self.loss_scaling:
      self.optimizer, self.backbone_optimizer = (
          tf_keras.mixed_precision.LossScaleOptimizer(optimizer, initial_scale=initial_loss_scale)
          for optimizer in (self.optimizer, self.backbone_optimizer))
    self.global_step = orbit.utils.create_global_step()
    self.loss_sums: Dict[str, tf.Variable] = {}
    with strategy.scope():
      self.loss_steps = tf.Variable(0.0, trainable=False, name='loss_steps')
      # Bad input records skipped by this replica's pipeline (read: all replicas').
      self.skipped_records = tf.Variable(
          0, dtype=tf.int64, trainable=False, name='skipped_records',
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.SUM)
      self.skipped_updates = tf.Variable(
          0.0, trainable=False, name='skipped_updates',
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # Per-replica gradient sums over the micro-batches of one update.
      self._gradient_sums = [
          tf.Variable(tf.zeros_like(v), trainable=False, name='gradient_sum',
                      synchronization=tf.VariableSynchronization.ON_READ,
                      aggregation=tf.VariableAggregation.SUM)
          for v in self.backbone_variables + self.other_variables
      ] if gradient_accumulation_steps > 1 else []
    whole_update = jit_compile and not isinstance(strategy, _MERGE_IN_PYTHON)
    if jit_compile and not whole_update:
      logging.info('jit_compile under %s: XLA compiles the forward and backward pass; '
                   'the updates (cross-replica sums) run outside it.',
                   type(strategy).__name__)
    compile_if = lambda fn, on: tf.function(fn, jit_compile=True) if on else fn
    self._gradients = compile_if(self._losses_and_gradients, jit_compile and not whole_update)
    self._update = compile_if(self._losses_and_update, whole_update)
    self._accumulate_gradients = compile_if(self._losses_and_gradient_sums, whole_update)
    self._apply_sums = compile_if(self._apply_gradient_sums, whole_update)
    self.in_graph_loop = in_graph_loop
    self._progress = None
    self._skipped_records_logged = 0
    self._total_steps = optimizer_config.train_steps
    # Polled after every train step, or every loop in graph
    # (e.g. `preemption.SigtermWatcher.requested`).
    self.stop_requested: Callable[[], bool] = lambda: False
    train_dataset = eval_dataset = None
    if train_dataset_fn:
      train_dataset = strategy.distribute_datasets_from_function(train_dataset_fn)
    if eval_dataset_fn:
      eval_dataset = strategy.distribute_datasets_from_function(eval_dataset_fn)
    orbit.StandardTrainer.__init__(self, train_dataset, options=orbit.StandardTrainerOptions(
        use_tf_while_loop=in_graph_loop))
    orbit.StandardEvaluator.__init__(
        self, eval_dataset,
        options=orbit.StandardEvaluatorOptions(use_tf_while_loop=False))

  def checkpoint_items(self) -> Dict[str, tf.Module]:
    """What a checkpoint holds: enough to resume exactly."""
    return {'model': self.model, 'optimizer': self.optimizer,
            'backbone_optimizer': self.backbone_optimizer, 'global_step': self.global_step}

  # ---- Training. ----

  def _create_loss_sums(self, iterator) -> None:
    """Makes one running-sum variable per loss term, before any train step is traced.

    The names come from a trace (never run) of one replica's forward pass and
    loss on the iterator's element, so that the step holds no variable creation
    and can run inside a `tf.while_loop`.
    """
    def replica_losses(features):
      features = _loss_features(features)
      with random_draws.seeded(self._step_seed(0)):
        return self.loss_fn(features, self.model(features[common.IMAGE], training=True))
    probe = tf.function(lambda it: self.strategy.run(replica_losses, args=(next(it),)))
    names = probe.get_concrete_function(iterator).structured_outputs
    with self.strategy.scope():
      self.loss_sums.update({name: tf.Variable(0.0, trainable=False,
                                               name=name.replace('/', '_'))
                             for name in sorted(names)})

  def _accumulate(self, losses: Dict[str, tf.Tensor]) -> None:
    """Adds a step's replica-reduced losses to the running sums (cross-replica)."""
    for name, value in losses.items():
      self.loss_sums[name].assign_add(value)
    self.loss_steps.assign_add(1.0)

  def loss_averages(self) -> Dict[str, float]:
    """Mean of each loss term over the steps since the last `train_loop_begin`."""
    steps = max(float(self.loss_steps.numpy()), 1.0)
    return {name: float(total.numpy()) / steps for name, total in self.loss_sums.items()}

  def _losses_and_gradients(self, features, seed):
    """The named loss terms and the gradients of every trainable variable."""
    with random_draws.seeded(seed), tf.GradientTape() as tape:
      outputs = self.model(features[common.IMAGE], training=True)
      losses = self.loss_fn(features, outputs)
      total = losses[panoptic_loss.TOTAL]
      if self.loss_scaling:
        total = self.optimizer.get_scaled_loss(total)
    gradients = tape.gradient(total, self.backbone_variables + self.other_variables)
    if self.loss_scaling:
      gradients = self.optimizer.get_unscaled_gradients(gradients)
    return losses, gradients

  def _losses_and_update(self, features, seed):
    """One replica's update from one batch (XLA-compiled with `jit_compile`)."""
    losses, gradients = self._gradients(features, seed)
    self._apply_gradients(gradients)
    return losses

  def _losses_and_gradient_sums(self, features, seed):
    """Adds one micro-batch's gradients to this replica's sums (XLA-compiled with
    `jit_compile`)."""
    losses, gradients = self._gradients(features, seed)
    for total, gradient in zip(self._gradient_sums, gradients):
      total.assign_add(tf.convert_to_tensor(gradient))
    return losses

  def _apply_gradient_sums(self):
    """One update from the summed gradients, which restart at zero (XLA-compiled
    with `jit_compile`)."""
    self._apply_gradients([tf.identity(total) for total in self._gradient_sums])
    for total in self._gradient_sums:
      total.assign(tf.zeros_like(total))

  def _step_seed(self, micro_batch) -> tf.Tensor:
    """int64 [2]: the seed of this replica's micro-batch of the current step."""
    context = tf.distribute.get_replica_context()
    draw = (tf.cast(micro_batch, tf.int64) * context.num_replicas_in_sync +
            tf.cast(context.replica_id_in_sync_group, tf.int64))
    step = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.global_step, tf.int64)])
    return tf.random.experimental.stateless_fold_in(step, draw)

  def _replica_run(self, compute, features, micro_batch):
    """`compute(features, seed)`'s losses on one replica, as parts of the global mean.

    The skipped-record count and the string features stay outside `compute`.
    """
    if common.SKIPPED_RECORDS in features:
      self.skipped_records.assign(tf.reduce_max(features[common.SKIPPED_RECORDS]))
    losses = compute(_loss_features(features), self._step_seed(micro_batch))
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    return {name: value * replicas for name, value in losses.items()}

  def _replica_step(self, features):
    return self._replica_run(self._update, features, 0)

  def _replica_accumulate(self, features, micro_batch):
    """Adds a micro-batch's gradients to this replica's sums."""
    return self._replica_run(self._accumulate_gradients, features, micro_batch)

  def _apply_gradients(self, gradients):
    """One update of both optimizers (in replica context)."""
    if self.gradient_clip_norm:
      gradients, _ = tf.clip_by_global_norm(gradients, self.gradient_clip_norm)
    if self.loss_scaling:
      gradients = self._skip_update_on_overflow(gradients)
    # Losses are divided by the GLOBAL batch size, and the optimizers sum the
    # gradients over replicas: the update is that of the global mean.
    num_backbone = len(self.backbone_variables)
    if num_backbone:
      self.backbone_optimizer.apply_gradients(
          zip(gradients[:num_backbone], self.backbone_variables))
    self.optimizer.apply_gradients(zip(gradients[num_backbone:], self.other_variables))

  def _skip_update_on_overflow(self, gradients):
    """Counts an update whose gradients overflow on any replica; poisons it for both.

    Each `LossScaleOptimizer` skips an update whose (replica-summed) gradients are
    not finite and halves its scale. Making every gradient NaN when any is keeps
    the two optimizers' updates and loss scales in step.
    """
    gradients = [tf.convert_to_tensor(g) for g in gradients]
    overflow = 1.0 - tf.cast(
        tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients]), tf.float32)
    overflow = tf.minimum(tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, overflow), 1.0)
    self.skipped_updates.assign_add(overflow)
    poison = tf.where(overflow > 0.0, float('nan'), 0.0)
    return [g + tf.cast(poison, g.dtype) for g in gradients]

  def _accumulated_step(self, iterator):
    """`gradient_accumulation_steps` micro-batches, then one update."""
    def run(features, micro_batch):
      losses = self.strategy.run(self._replica_accumulate, args=(features, micro_batch))
      return {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
              for name, value in losses.items()}
    # The first micro-batch creates the loss names; a graph loop runs the others.
    losses = run(next(iterator), 0)
    for micro_batch in tf.range(1, self.gradient_accumulation_steps):
      micro = run(next(iterator), micro_batch)
      losses = {name: total + micro[name] for name, total in losses.items()}
    self.strategy.run(self._apply_sums)
    return losses

  def create_train_loop_fn(self):
    """Orbit's loop of `train_step` calls, in Python or in graph, stoppable.

    The Python loop checks for a stop after every step, the in-graph loop after
    all of its steps: every worker contributes `stop_requested()` to an
    all-reduce; if any asked, all raise `preemption.Preempted` at the same
    global step.
    """
    any_worker = tf.function(lambda flag: self.strategy.reduce(
        tf.distribute.ReduceOp.SUM, self.strategy.run(tf.identity, args=(flag,)), axis=None))

    def stop_if_requested():
      if any_worker(tf.constant(float(self.stop_requested()))) > 0:
        raise preemption.Preempted(int(self.global_step.numpy()))

    if self.in_graph_loop:
      steps_fn = tf.function(orbit.utils.create_tf_while_loop_fn(self.train_step))

      def run_steps(iterator, num_steps):
        steps_fn(iterator, tf.convert_to_tensor(num_steps, tf.int32))
        stop_if_requested()
    else:
      step_fn = tf.function(self.train_step)

      def run_steps(iterator, num_steps):
        for _ in range(int(num_steps)):
          step_fn(iterator)
          stop_if_requested()

    def loop_fn(iterator, num_steps, state=None, reduce_fn=None):
      del reduce_fn  # train_step returns nothing.
      if not self.loss_sums:
        self._create_loss_sums(iterator)
      run_steps(iterator, num_steps)
      return state
    return loop_fn

  def train_loop_begin(self):
    for variable in list(self.loss_sums.values()) + [self.loss_steps, self.skipped_updates]:
      variable.assign(0.0)
    if self._progress is None:
      self._progress = (time.time(), int(self.global_step.numpy()))

  def train_step(self, iterator):
    if self.gradient_accumulation_steps > 1:
      losses = self._accumulated_step(iterator)
    else:
      losses = {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in self.strategy.run(
                    self._replica_step, args=(next(iterator),)).items()}
    self._accumulate(losses)
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
    if self.loss_scaling:
      self._log_loss_scale(results, step)
    self._log_skipped_records(results, step)
    return results

  def _log_skipped_records(self, results: Dict[str, float], step: int) -> None:
    skipped = int(self.skipped_records.numpy())
    if skipped:
      results[SKIPPED_RECORDS] = float(skipped)
    if skipped > self._skipped_records_logged:
      logging.warning('step %d: %d bad input records skipped so far (each named in the '
                      'log; panoptic_dataset.skip_bad_records).', step, skipped)
      self._skipped_records_logged = skipped

  def _log_loss_scale(self, results: Dict[str, float], step: int) -> None:
    skipped = int(self.skipped_updates.numpy())
    results[LOSS_SCALE] = float(self.optimizer.loss_scale.numpy())
    results[SKIPPED_UPDATES] = float(skipped)
    if skipped:
      logging.warning('step %d: skipped %d update(s) whose float16 gradients overflowed; '
                      'loss scale now %g.', step, skipped, results[LOSS_SCALE])

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


def _loss_features(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """The features a train step reads: strings (image ids), which cannot enter an
  XLA cluster, and the skipped-record count are dropped."""
  return {k: v for k, v in features.items()
          if v.dtype != tf.string and k != common.SKIPPED_RECORDS}


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
