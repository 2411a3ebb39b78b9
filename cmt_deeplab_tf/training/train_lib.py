"""Runs an experiment: a `PanopticTask`'s parts driven by an `orbit.Controller`.

Modes: `train`, `eval` (the latest checkpoint), `train_and_eval` (evaluate every
`eval_interval` steps) and `continuous_eval` (evaluate each new checkpoint until
training is done). Checkpoints, summaries, the operative gin config, the class
table (`run_dir`) and one `eval/results-<step>.json` per evaluated checkpoint go
into the model dir, and nothing there is overwritten (`run_dir`,
`eval_actions`); with a submission format, each evaluation also writes its
predictions as `eval/submission-<step>/` in that benchmark's layout.
(Model Garden's `official/core/train_lib.run_experiment` plays this part.)
"""
import functools
import os
from typing import Dict, Optional

from absl import logging
import tensorflow as tf

from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.evaluation import submission
from cmt_deeplab_tf.training import checkpointing
from cmt_deeplab_tf.training import config_checks
from cmt_deeplab_tf.training import eval_actions
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import preemption
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import trainer as trainer_lib

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval')
TRAINING_MODES = ('train', 'train_and_eval')


def check_model_dir(model_dir: str) -> None:
  """Creates the model dir and checks that it is writable."""
  try:
    tf.io.gfile.makedirs(model_dir)
    probe = os.path.join(model_dir, '.write_test')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f'--model_dir={model_dir} is not writable: {e}') from e


def uses_in_graph_loop(config: experiment.ExperimentConfig,
                       strategy: tf.distribute.Strategy) -> bool:
  """`ExperimentConfig.in_graph_loop`; None: on under TPUStrategy (whose every
  host round trip costs), off elsewhere."""
  if config.in_graph_loop is not None:
    return config.in_graph_loop
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def build_trainer(task: task_lib.PanopticTask, strategy: tf.distribute.Strategy,
                  mode: str, prediction_callback=None,
                  start_step: int = 0) -> trainer_lib.PanopticTrainer:
  """Seeds the run, then builds the task's parts and the trainer inside the strategy.

  Args:
    task: the experiment's task.
    strategy: the distribution strategy.
    mode: one of `MODES`: which data sets are built.
    prediction_callback: passed to the trainer (see `PanopticTrainer`).
    start_step: the step a resumed run restores; its training data skips the
      batches of the steps before.
  """
  config = task.config
  experiment.seed_run(config)
  with strategy.scope():
    model = task.build_model()
    return trainer_lib.PanopticTrainer(
        strategy=strategy, model=model, loss_fn=task.build_losses(),
        optimizer_config=task.build_optimizer_config(),
        post_processor=task.build_post_processor(), evaluator=task.build_metrics(),
        train_dataset_fn=(functools.partial(task.build_inputs, True, start_step=start_step)
                          if mode in TRAINING_MODES else None),
        eval_dataset_fn=(functools.partial(task.build_inputs, False)
                         if mode != 'train' else None),
        jit_compile=config.jit_compile,
        in_graph_loop=uses_in_graph_loop(config, strategy), prediction_callback=prediction_callback,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        initial_loss_scale=config.initial_loss_scale, seed=config.seed)


def run(mode: str, model_dir: str, strategy: tf.distribute.Strategy,
        config: Optional[experiment.ExperimentConfig] = None, return_trainer: bool = False,
        submission_format: Optional[str] = None):
  """Runs `mode`.

  Args:
    mode: one of `MODES`.
    model_dir: the run's directory.
    strategy: the distribution strategy.
    config: the experiment; default: gin's `ExperimentConfig()`.
    return_trainer: return the trainer instead of the last output.
    submission_format: with an evaluating mode, also write every evaluation's
      predictions in this benchmark layout (`submission.FORMATS`).

  Returns:
    The last training or evaluation output, or the trainer itself when
    `return_trainer` (for tests and tools that inspect the trained state).
  """
  if mode not in MODES:
    raise ValueError(f'--mode={mode!r} is not one of {MODES}.')
  if submission_format and (mode == 'train' or
                            submission_format not in submission.FORMATS):
    raise ValueError(f'--submission_format={submission_format!r} needs an evaluating '
                     f'--mode and one of {submission.FORMATS} (got --mode={mode}).')
  config = config or experiment.ExperimentConfig()
  config_checks.check_experiment(config)
  check_model_dir(model_dir)
  with experiment.dtype_policy(config.mixed_precision):
    task = task_lib.PanopticTask(config)
    trainer, output = _Run(mode, model_dir, strategy, task, submission_format).run()
  return trainer if return_trainer else output


class _Run:
  """One `run` call: what this process reads and writes, in the order it does."""

  def __init__(self, mode: str, model_dir: str, strategy: tf.distribute.Strategy,
               task: task_lib.PanopticTask, submission_format: Optional[str]):
    self.mode, self.model_dir, self.strategy, self.task = mode, model_dir, strategy, task
    self.config = task.config
    self.trains = mode in TRAINING_MODES
    self.chief = _is_chief(strategy)
    # Non-chief workers write their (identical) checkpoints to a folder of their own.
    self.checkpoint_dir = model_dir if self.chief else os.path.join(
        model_dir, f'.worker_{strategy.cluster_resolver.task_id}')
    self.submissions = (eval_actions.SubmissionRecorder(model_dir, task.info,
                                                        submission_format)
                        if submission_format and self.chief else None)

  def run(self):
    """Returns (the trainer, the output of the mode)."""
    if self.chief:  # Refuses a model dir trained for other classes, before any restore.
      run_dir.record_class_table(self.model_dir, self.task.info)
    latest = self._latest_checkpoint()
    start_step = checkpointing.checkpoint_step(self.checkpoint_dir) if self.trains else 0
    trainer = build_trainer(self.task, self.strategy, self.mode,
                            self.submissions.add if self.submissions else None, start_step)
    if self.trains and self.chief:  # Before any restore: the error names the bindings.
      run_dir.check_model_bindings(self.model_dir)
    if self.submissions:
      self.submissions.global_step = trainer.global_step
    manager = self._checkpoint_manager(trainer, latest)
    self._restore_or_initialize(trainer, manager, latest)
    if self.trains and self.chief:
      run_dir.record_training_config(self.model_dir, start_step)
    controller = self._controller(trainer, manager)
    with record_errors.named_record_errors():
      return trainer, self._run_mode(trainer, manager, controller)

  def _latest_checkpoint(self) -> Optional[str]:
    """Training moves bad checkpoints aside; evaluation only skips them."""
    if self.trains and self.chief:
      return checkpointing.recover_latest(self.checkpoint_dir)
    good, bad = checkpointing.newest_good_checkpoint(self.checkpoint_dir)
    for prefix, problem in bad:
      logging.warning('Checkpoint %s is unusable (%s); using %s.', prefix, problem, good)
    return good

  def _checkpoint_manager(self, trainer: trainer_lib.PanopticTrainer,
                          latest: Optional[str]) -> checkpointing.CheckpointManager:
    """Training checkpoints everything a resume needs; evaluation reads the model."""
    items = (trainer.checkpoint_items() if self.trains else
             dict(model=trainer.model, global_step=trainer.global_step))
    return checkpointing.CheckpointManager(
        tf.train.Checkpoint(**items), self.checkpoint_dir,
        max_to_keep=self.config.max_checkpoints, step_counter=trainer.global_step,
        checkpoint_interval=self.config.checkpoint_interval, restore_from=latest,
        partial_restore=not self.trains)

  def _restore_or_initialize(self, trainer: trainer_lib.PanopticTrainer,
                             manager: checkpointing.CheckpointManager,
                             latest: Optional[str]) -> None:
    """Checks that the run's checkpoint fits the model, else initialises a new run
    (the controller restores the checkpoint itself)."""
    if latest:
      checkpointing.check_checkpoint_matches(manager.checkpoint, latest)
    elif self.mode == 'eval':
      raise ValueError(f'--mode=eval: no checkpoint in --model_dir={self.model_dir}.')
    else:
      self.task.initialize(trainer.model)

  def _controller(self, trainer: trainer_lib.PanopticTrainer,
                  manager: checkpointing.CheckpointManager) -> checkpointing.Controller:
    """Only the chief writes summaries and evaluation records."""
    chief, model_dir = self.chief, self.model_dir
    actions = None
    if chief:
      actions = [eval_actions.EvalRecorder(trainer, model_dir, self.task.info,
                                           write_config=not self.trains)]
      actions += [self.submissions] if self.submissions else []
    return checkpointing.Controller(
        strategy=self.strategy, trainer=trainer if self.trains else None,
        evaluator=trainer if self.mode != 'train' else None,
        global_step=trainer.global_step, steps_per_loop=self.config.steps_per_loop,
        checkpoint_manager=manager,
        summary_interval=self.config.summary_interval if chief else None,
        summary_dir=os.path.join(model_dir, 'train') if chief else None,
        eval_summary_dir=os.path.join(model_dir, 'eval') if chief else None,
        eval_actions=actions)

  def _run_mode(self, trainer: trainer_lib.PanopticTrainer,
                manager: checkpointing.CheckpointManager,
                controller: checkpointing.Controller):
    config = self.config
    if self.mode == 'train':
      preemption.run_until_preempted(trainer, manager, controller.train,
                                     config.train_steps)
      return trainer.loss_averages()
    if self.mode == 'eval':
      return controller.evaluate(config.eval_steps)
    if self.mode == 'train_and_eval':
      return preemption.run_until_preempted(
          trainer, manager, controller.train_and_evaluate, config.train_steps,
          config.eval_steps, config.eval_interval)
    return _evaluate_continuously(controller, trainer, config, self.model_dir)


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == 'chief' or (
      resolver.task_type == 'worker' and resolver.task_id == 0 and
      'chief' not in resolver.cluster_spec().as_dict())


def _evaluate_continuously(controller: checkpointing.Controller,
                           trainer: trainer_lib.PanopticTrainer,
                           config: experiment.ExperimentConfig,
                           model_dir: str) -> Optional[Dict[str, float]]:
  """Evaluates each new checkpoint; ends once the one at `train_steps` is evaluated.

  A checkpoint whose step already has results (e.g. from `train_and_eval`) is
  skipped. Also ends when no new checkpoint comes for `continuous_eval_timeout`
  seconds (training stopped early).
  """
  def timed_out():
    logging.warning('No new checkpoint for %d s at step %d (train_steps %d): stopping.',
                    config.continuous_eval_timeout, int(trainer.global_step.numpy()),
                    config.train_steps)
    return True

  step = lambda: int(trainer.global_step.numpy())
  return controller.evaluate_continuously(
      config.eval_steps, timeout=config.continuous_eval_timeout, timeout_fn=timed_out,
      already_evaluated=lambda: tf.io.gfile.exists(
          eval_actions.results_path(model_dir, step())),
      finished=lambda: step() >= config.train_steps)
