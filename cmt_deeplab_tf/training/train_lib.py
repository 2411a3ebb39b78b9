"""Runs an experiment: builds everything from gin and drives an `orbit.Controller`.

Modes: `train`, `eval` (the latest checkpoint), `train_and_eval` (evaluate every
`eval_interval` steps) and `continuous_eval` (evaluate each new checkpoint until
training is done). Checkpoints, summaries, the operative gin config, the class
table (`run_dir`) and one `eval/results-<step>.json` per evaluated checkpoint go
into the model dir, and nothing there is overwritten (`run_dir`, `EvalRecorder`);
with a submission format, each evaluation also writes its predictions as
`eval/submission-<step>/` in that benchmark's layout.
"""
import contextlib
import dataclasses
import json
import os
import re
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
import gin
import numpy as np
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf import config_files
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.checkpoints import deeplab2
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.data import tfds_source as tfds_source_lib
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.evaluation import submission
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.ops import colors
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.training import checkpointing
from cmt_deeplab_tf.training import config_checks
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import preemption
from cmt_deeplab_tf.training import trainer as trainer_lib

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval')
TRAINING_MODES = ('train', 'train_and_eval')
CONFIG_FILE = run_dir.CONFIG_FILE
NATIVE = 'native'
DEEPLAB2 = 'deeplab2'
INIT_CHECKPOINT_FORMATS = (NATIVE, DEEPLAB2)
# The layers whose width is the class count: re-initialised by
# init_checkpoint_modules='all_but_class_head'.
_CLASS_LOGIT_LAYERS = re.compile(
    r'(class_head/classifier|semantic_head/conv_head/output)/(kernel|bias):0$')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """The data, schedule and bookkeeping of a run (the model is `build_model`'s).

  The class table (and so `build_model`'s num_classes) is the `class_table.json`
  beside the shards, or `dataset_name`'s built-in table for shards without one;
  `dataset_name`, if set, must name it. With `tfds_source` the examples come
  from a prepared TFDS builder instead of the file patterns.
  """
  dataset_name: Optional[str] = None
  train_file_pattern: Optional[str] = None
  eval_file_pattern: Optional[str] = None
  tfds_source: Optional[tfds_source_lib.TfdsSource] = None
  train_batch_size: int = 64
  eval_batch_size: int = 1
  train_crop_size: Tuple[int, int] = (1025, 1025)
  eval_crop_size: Tuple[int, int] = (641, 641)
  max_num_masks: int = 128
  train_steps: int = 100_000
  steps_per_loop: int = 100
  summary_interval: int = 100
  checkpoint_interval: int = 1000
  max_checkpoints: int = 5
  eval_interval: int = 5000
  eval_steps: int = -1
  continuous_eval_timeout: int = 3600
  jit_compile: bool = False
  # None, 'mixed_bfloat16' (TPUs, recent GPUs) or 'mixed_float16' (GPUs without
  # bfloat16; dynamic loss scaling from `initial_loss_scale`, Keras' 2**15 if None).
  mixed_precision: Optional[str] = None
  initial_loss_scale: Optional[float] = None
  # Micro-batches per optimizer update: the data pipeline yields batches of
  # train_batch_size / gradient_accumulation_steps; steps count updates.
  gradient_accumulation_steps: int = 1
  seed: Optional[int] = None
  # Bitwise-repeatable runs on one machine (needs `seed`; `seed_run`): TensorFlow's
  # op determinism, which also makes every tf.data step deterministic whatever
  # `panoptic_dataset.deterministic` says. Its cost: README, "Repeatable runs".
  deterministic: bool = False
  # Weights to start from when the model dir has no checkpoint yet, e.g. an
  # ImageNet-pretrained backbone (supplement Sec. 2). Format 'native': a checkpoint
  # whose root holds `model` (as this trainer writes); 'deeplab2': a DeepLab2 (or
  # Model Garden) checkpoint, mapped by `checkpoints.deeplab2`. Modules: 'all',
  # 'backbone', or 'all_but_class_head' (another class count: the class-logit
  # layers are re-initialised).
  init_checkpoint: Optional[str] = None
  init_checkpoint_modules: str = 'all'
  init_checkpoint_format: str = 'native'


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


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == 'chief' or (
      resolver.task_type == 'worker' and resolver.task_id == 0 and
      'chief' not in resolver.cluster_spec().as_dict())


def experiment_dataset_info(config: ExperimentConfig) -> dataset_info_lib.DatasetInfo:
  """The run's class table: the TFDS source's, the shards', or the built-in one.

  Raises:
    ValueError: if none is found, the shards' folders disagree, or
      `dataset_name` names another data set than the shards'.
  """
  if config.tfds_source is not None:
    if config.train_file_pattern or config.eval_file_pattern:
      raise ValueError('ExperimentConfig.tfds_source and the file patterns are both set; '
                       'choose one input.')
    return config.tfds_source.dataset_info()
  patterns = [p for p in (config.train_file_pattern, config.eval_file_pattern) if p]
  tables = {t for t in (class_table.for_shards(p) for p in patterns) if t is not None}
  if len(tables) > 1:
    raise ValueError(f'The train and eval shards come with different class tables: '
                     f'{sorted(dataset_info_lib.describe(t) for t in tables)}.')
  if tables:
    info = tables.pop()
    if config.dataset_name not in (None, info.name):
      raise ValueError(f'ExperimentConfig.dataset_name={config.dataset_name!r}, but the '
                       f'shards\' {class_table.CLASS_TABLE_FILE} is that of '
                       f'{dataset_info_lib.describe(info)}.')
    return info
  if config.dataset_name is None:
    raise ValueError(f'No {class_table.CLASS_TABLE_FILE} beside the shards of {patterns} '
                     'and no ExperimentConfig.dataset_name: convert the data with '
                     'convert_coco / convert_cityscapes, or name a built-in data set.')
  return dataset_info_lib.get_dataset_info(config.dataset_name)


def seed_run(config: ExperimentConfig) -> None:
  """Seeds Python, NumPy and TensorFlow from `config.seed`; with
  `config.deterministic`, turns on TensorFlow's op determinism.

  Called before the model is built, so that its initial weights are the seed's.
  The random draws of training steps are stateless functions of the seed and the
  step (`trainer`), and the input pipeline's of the seed and the element
  (`pipeline.panoptic_dataset`). Op determinism is process-wide and stays on.

  Raises:
    ValueError: if `deterministic` is set without a seed.
  """
  if config.deterministic:
    if config.seed is None:
      raise ValueError('ExperimentConfig.deterministic = True needs ExperimentConfig.seed.')
    tf.config.experimental.enable_op_determinism()
  if config.seed is not None:
    tf_keras.utils.set_random_seed(config.seed)


def micro_batch_size(config: ExperimentConfig) -> int:
  """The batch of one forward pass in training: train_batch_size / accumulation."""
  steps = config.gradient_accumulation_steps
  if steps < 1 or config.train_batch_size % steps:
    raise ValueError(f'ExperimentConfig.gradient_accumulation_steps={steps} must be >= 1 '
                     f'and divide train_batch_size={config.train_batch_size}.')
  return config.train_batch_size // steps


def _dataset_fn(config: ExperimentConfig, info: dataset_info_lib.DatasetInfo,
                is_training: bool, start_step: int = 0):
  pattern = config.train_file_pattern if is_training else config.eval_file_pattern
  flag = 'train_file_pattern' if is_training else 'eval_file_pattern'
  if config.tfds_source is None:
    if not pattern:
      raise ValueError(f'ExperimentConfig.{flag} is not set.')
    pipeline.list_shards(pattern)  # Fails early, naming the pattern.

  def dataset_fn(input_context=None):
    return pipeline.panoptic_dataset(
        file_pattern=pattern, dataset_info=info, tfds_source=config.tfds_source,
        is_training=is_training,
        batch_size=micro_batch_size(config) if is_training else config.eval_batch_size,
        crop_size=config.train_crop_size if is_training else config.eval_crop_size,
        max_num_masks=config.max_num_masks, seed=config.seed,
        skip_batches=start_step * config.gradient_accumulation_steps if is_training else 0,
        input_context=input_context)
  return dataset_fn


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


def build_trainer(config: ExperimentConfig, strategy: tf.distribute.Strategy, mode: str,
                  info: Optional[dataset_info_lib.DatasetInfo] = None,
                  prediction_callback=None,
                  start_step: int = 0) -> trainer_lib.PanopticTrainer:
  """Builds model, loss, optimizers, post-processing and data inside the strategy.

  Args:
    config: the experiment.
    strategy: the distribution strategy.
    mode: one of `MODES`.
    info: the class table; default `experiment_dataset_info(config)`.
    prediction_callback: passed to the trainer (see `PanopticTrainer`).
    start_step: the step a resumed run restores; its training data skips the
      batches of the steps before.
  """
  info = info or experiment_dataset_info(config)
  trains, evaluates = mode in TRAINING_MODES, mode != 'train'
  seed_run(config)
  with strategy.scope():
    model = builder.build_model(num_classes=builder.num_classes_for(info.num_classes))
    create_all_variables(model, strategy)
    return trainer_lib.PanopticTrainer(
        strategy=strategy, model=model,
        loss_fn=panoptic_loss.PanopticLoss(num_classes=info.num_classes,
                                           global_batch_size=config.train_batch_size),
        optimizer_config=optimization.OptimizerConfig(train_steps=config.train_steps),
        post_processor=post_processing.PostProcessor(info.is_thing, info.label_divisor),
        evaluator=panoptic_evaluator.PanopticEvaluator(info),
        train_dataset_fn=_dataset_fn(config, info, True, start_step) if trains else None,
        eval_dataset_fn=_dataset_fn(config, info, False) if evaluates else None,
        jit_compile=config.jit_compile, prediction_callback=prediction_callback,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        initial_loss_scale=config.initial_loss_scale, seed=config.seed)


def restore_init_checkpoint(model: tf_keras.Model, path: str, modules: str,
                            checkpoint_format: str = NATIVE) -> None:
  """Initialises the model, its backbone, or all but its class-logit layers.

  Args:
    model: The built model (all variables created).
    path: The checkpoint prefix, or a directory holding one checkpoint.
    modules: 'all', 'backbone' or 'all_but_class_head'.
    checkpoint_format: 'native' (another run of this trainer) or 'deeplab2'.

  Raises:
    ValueError: Naming the field, on a bad value, a missing checkpoint, a
      checkpoint of another architecture, or another class count with 'all'.
  """
  if modules not in deeplab2.MODULES:
    raise ValueError(f'ExperimentConfig.init_checkpoint_modules={modules!r}: expected '
                     f'one of {deeplab2.MODULES}.')
  if checkpoint_format not in INIT_CHECKPOINT_FORMATS:
    raise ValueError(f'ExperimentConfig.init_checkpoint_format={checkpoint_format!r}: '
                     f'expected one of {INIT_CHECKPOINT_FORMATS}.')
  try:
    path = deeplab2.find_checkpoint(path)
  except ValueError as e:
    raise ValueError(f'ExperimentConfig.init_checkpoint={path}: {e}') from e
  if checkpoint_format == DEEPLAB2:
    checkpoint = deeplab2.DeepLab2Checkpoint(path)
    plan = deeplab2.plan_import(model, checkpoint, modules)
    deeplab2.apply_plan(plan, checkpoint)
    logging.info('Initialised %s from the DeepLab2 checkpoint %s (%s): %d variables '
                 'mapped, %d keys skipped, %d variables kept initial.', modules, path,
                 plan.layout, len(plan.mappings), len(plan.skipped),
                 len(plan.kept_initial))
    return
  if modules == deeplab2.ALL:
    _check_class_count(model, path, modules)
  if modules == deeplab2.ALL_BUT_CLASS_HEAD:
    _restore_all_but_class_logits(model, path)
  else:
    target = model if modules == deeplab2.ALL else tf.train.Checkpoint(
        backbone=model.backbone)
    _restore_native(target, path, modules)
  logging.info('Initialised %s from %s.', modules, path)


def _restore_native(target, path: str, modules: str) -> None:
  status = tf.train.Checkpoint(model=target).read(path).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f'ExperimentConfig.init_checkpoint={path} does not match the model '
                     f'({modules}): {str(e)[:500]}') from e


def _check_class_count(model: tf_keras.Model, path: str, modules: str) -> int:
  """The checkpoint's class count + 1; an error if it differs with 'all'."""
  theirs = {shape[-1] for name, shape in tf.train.list_variables(path)
            if re.search(r'class_head/_classifier/bias/', name)}
  ours = {v.shape[-1] for v in model.variables
          if re.search(r'class_head/classifier/bias:0$', v.name)}
  if len(theirs) != 1 or len(ours) != 1:
    raise ValueError(f'ExperimentConfig.init_checkpoint={path}: expected one '
                     'class-logit width in the checkpoint and in the model, found '
                     f'{sorted(theirs)} and {sorted(ours)}.')
  if theirs != ours and modules == deeplab2.ALL:
    raise ValueError(
        f'ExperimentConfig.init_checkpoint={path} predicts {theirs.pop() - 1} classes, '
        f'the model {ours.pop() - 1}: the class counts differ; use '
        "ExperimentConfig.init_checkpoint_modules='all_but_class_head' to "
        're-initialise the class-logit layers.')
  return theirs.pop()


def _restore_all_but_class_logits(model: tf_keras.Model, path: str) -> None:
  """Restores the configured model built with the checkpoint's class count, then
  copies every variable but the class-logit layers (which keep their values).

  The source model comes from `build_model` and the gin configuration, as the
  run's own model does.
  """
  num_classes = _check_class_count(model, path, deeplab2.ALL_BUT_CLASS_HEAD) - 1
  source = builder.build_model(num_classes=num_classes)
  create_all_variables(source, tf.distribute.get_strategy())
  _restore_native(source, path, deeplab2.ALL_BUT_CLASS_HEAD)
  if len(source.variables) != len(model.variables):
    raise ValueError(f'ExperimentConfig.init_checkpoint={path}: the model has '
                     f'{len(model.variables)} variables, the checkpoint\'s '
                     f'{len(source.variables)}.')
  for theirs, ours in zip(source.variables, model.variables):
    if _CLASS_LOGIT_LAYERS.search(ours.name):
      continue
    if theirs.shape != ours.shape:
      raise ValueError(f'ExperimentConfig.init_checkpoint={path}: {theirs.name} '
                       f'{theirs.shape} does not fit {ours.name} {ours.shape}.')
    ours.assign(theirs)


def check_checkpoint_matches(checkpoint: tf.train.Checkpoint, path: str) -> None:
  """Restores `path`, failing clearly if it was written by another architecture."""
  try:
    checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
    raise ValueError(
        f'Checkpoint {path} does not match the configured model (was it written by '
        f'another architecture or class count?): {str(e)[:500]}') from e


def results_path(model_dir: str, step: int) -> str:
  """`<model_dir>/eval/results-<step>.json`: the first evaluation of `step`."""
  return os.path.join(model_dir, 'eval', f'results-{step}.json')


class EvalRecorder:
  """Orbit eval action: writes results JSON and prediction images per checkpoint.

  Never overwrites: a step evaluated again (e.g. with other post-processing)
  gets `results-<step>.<n>.json`, n = 1, 2, ... With `write_config` (an eval
  mode, whose config may differ from training's), the process's gin config goes
  beside each results file as `operative_config-<step>[.<n>].gin`.
  """

  def __init__(self, trainer: trainer_lib.PanopticTrainer, model_dir: str,
               info: dataset_info_lib.DatasetInfo, num_images: int = 2,
               write_config: bool = False):
    self._trainer = trainer
    self._model_dir = model_dir
    self._dir = os.path.join(model_dir, 'eval')
    self._info = info
    self._num_images = num_images
    self._write_config = write_config
    tf.io.gfile.makedirs(self._dir)
    self._writer = tf.summary.create_file_writer(os.path.join(self._dir, 'images'))

  def _new_name(self, step: int) -> str:
    """'<step>', or '<step>.<n>' with the first n whose results file is free."""
    name, n = str(step), 0
    while tf.io.gfile.exists(os.path.join(self._dir, f'results-{name}.json')):
      n += 1
      name = f'{step}.{n}'
    return name

  def __call__(self, output: Dict[str, float]) -> None:
    del output
    step = int(self._trainer.global_step.numpy())
    results = self._trainer.last_eval_results
    name = self._new_name(step)
    path = os.path.join(self._dir, f'results-{name}.json')
    if name != str(step):
      logging.info('Step %d was evaluated before (%s): this evaluation goes to %s.', step,
                   results_path(self._model_dir, step), path)
    if self._write_config:
      with tf.io.gfile.GFile(os.path.join(self._dir, f'operative_config-{name}.gin'),
                             'w') as f:
        f.write(gin.operative_config_str())
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump({'step': step, **_jsonable(results)}, f, indent=1)
    logging.info('step %d: PQ %.2f (95%% bootstrap interval %.2f-%.2f over %d images) '
                 'SQ %.2f RQ %.2f mIoU %.2f -> %s', step, results['pq'], results['pq_ci_low'],
                 results['pq_ci_high'], results['num_images'], results['sq'], results['rq'],
                 results['miou'], path)
    batch = self._trainer.last_eval_batch
    if batch is not None:
      with self._writer.as_default(step=step):
        for key in (common.PANOPTIC, common.PANOPTIC_PRED):
          images = np.stack([colors.colorize_panoptic(x, self._info)
                             for x in batch[key][:self._num_images]])
          tf.summary.image(key, images, max_outputs=self._num_images)


class SubmissionRecorder:
  """Writes each evaluation's predictions as `eval/submission-<step>/`.

  `add` is the trainer's prediction callback (per replica batch); calling the
  recorder, as an Orbit eval action after the evaluation, writes the JSON.
  Predictions are cropped to the image and, for images the eval crop shrank
  (`augment.fit_to_size`), resized back to the original size by nearest
  neighbour.
  """

  def __init__(self, model_dir: str, info: dataset_info_lib.DatasetInfo,
               submission_format: str):
    self._dir = os.path.join(model_dir, 'eval')
    self._info = info
    self._format = submission_format
    self._writer = None
    self.global_step = None

  def add(self, batch: Dict[str, np.ndarray]) -> None:
    if self._writer is None:
      output_dir = os.path.join(self._dir, f'submission-{int(self.global_step.numpy())}')
      self._writer = submission.make_writer(self._format, output_dir, self._info)
    for i, image_id in enumerate(batch[common.IMAGE_ID]):
      height, width = batch[common.VALID_SIZE][i]
      prediction = batch[common.PANOPTIC_PRED][i, :height, :width]
      original = tuple(batch[common.ORIGINAL_SIZE][i])
      if prediction.shape != original:
        prediction = tf.image.resize(prediction[..., None], original,
                                     method='nearest')[..., 0].numpy()
      self._writer.add(image_id, prediction)

  def __call__(self, output: Dict[str, float]) -> None:
    del output
    if self._writer is not None:
      path = self._writer.finalize()
      logging.info('Wrote the %s submission of step %d to %s.', self._format,
                   int(self.global_step.numpy()), path)
    self._writer = None


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value


def run(mode: str, model_dir: str, strategy: tf.distribute.Strategy,
        config: Optional[ExperimentConfig] = None, return_trainer: bool = False,
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
  config = config or ExperimentConfig()
  config_checks.check_experiment(config)
  check_model_dir(model_dir)
  with _dtype_policy(config.mixed_precision):
    return _run(mode, model_dir, strategy, config, return_trainer, submission_format)


@contextlib.contextmanager
def _dtype_policy(name: Optional[str]):
  """Sets the Keras dtype policy `name` (None: unchanged), then restores the old one."""
  previous = tf_keras.mixed_precision.global_policy()
  if name:
    tf_keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


def _run(mode, model_dir, strategy, config, return_trainer, submission_format):
  """`run` after its checks, under the configured dtype policy."""
  info = experiment_dataset_info(config)
  chief = _is_chief(strategy)
  if chief:  # Refuses a model dir trained for other classes, before any restore.
    run_dir.record_class_table(model_dir, info)
  submissions = (SubmissionRecorder(model_dir, info, submission_format)
                 if submission_format and chief else None)
  checkpoint_dir = model_dir if chief else os.path.join(
      model_dir, f'.worker_{strategy.cluster_resolver.task_id}')
  trains = mode in TRAINING_MODES
  # Training moves bad checkpoints aside; evaluation only skips them.
  latest = (checkpointing.recover_latest(checkpoint_dir) if trains and chief
            else _newest_good_checkpoint(checkpoint_dir))
  start_step = checkpoint_step(checkpoint_dir) if trains else 0
  trainer = build_trainer(config, strategy, mode, info,
                          submissions.add if submissions else None, start_step=start_step)
  if trains and chief:  # Before any restore, so that the error names the bindings.
    run_dir.check_model_bindings(model_dir)
  if submissions:
    submissions.global_step = trainer.global_step
  checkpoint = tf.train.Checkpoint(**(trainer.checkpoint_items() if trains else dict(
      model=trainer.model, global_step=trainer.global_step)))
  manager = checkpointing.CheckpointManager(
      checkpoint, checkpoint_dir, max_to_keep=config.max_checkpoints,
      step_counter=trainer.global_step, checkpoint_interval=config.checkpoint_interval,
      restore_from=latest, partial_restore=not trains)
  if latest:
    check_checkpoint_matches(checkpoint, latest)
  elif mode == 'eval':
    raise ValueError(f'--mode=eval: no checkpoint in --model_dir={model_dir}.')
  elif config.init_checkpoint:
    restore_init_checkpoint(trainer.model, config.init_checkpoint,
                            config.init_checkpoint_modules,
                            config.init_checkpoint_format)
  if trains and chief:
    run_dir.record_training_config(model_dir, start_step)
  controller = checkpointing.Controller(
      strategy=strategy, trainer=trainer if trains else None,
      evaluator=trainer if mode != 'train' else None, global_step=trainer.global_step,
      steps_per_loop=config.steps_per_loop, checkpoint_manager=manager,
      summary_interval=config.summary_interval if chief else None,
      summary_dir=os.path.join(model_dir, 'train') if chief else None,
      eval_summary_dir=os.path.join(model_dir, 'eval') if chief else None,
      eval_actions=([EvalRecorder(trainer, model_dir, info, write_config=not trains)] +
                    ([submissions] if submissions else [])) if chief else None)
  with record_errors.named_record_errors():
    output = _run_mode(mode, model_dir, config, trainer, manager, controller)
  return trainer if return_trainer else output


def _run_mode(mode, model_dir, config, trainer, manager, controller):
  """Runs `mode` with the built trainer, checkpoint manager and controller."""
  if mode == 'train':
    _until_preempted(trainer, manager, controller.train, config.train_steps)
    return trainer.loss_averages()
  if mode == 'eval':
    return controller.evaluate(config.eval_steps)
  if mode == 'train_and_eval':
    return _until_preempted(trainer, manager, controller.train_and_evaluate,
                            config.train_steps, config.eval_steps, config.eval_interval)
  return _evaluate_continuously(controller, trainer, config, model_dir)


def _newest_good_checkpoint(checkpoint_dir: str) -> Optional[str]:
  good, bad = checkpointing.newest_good_checkpoint(checkpoint_dir)
  for prefix, problem in bad:
    logging.warning('Checkpoint %s is unusable (%s); using %s.', prefix, problem, good)
  return good


def _evaluate_continuously(controller: checkpointing.Controller,
                           trainer: trainer_lib.PanopticTrainer, config: ExperimentConfig,
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
      already_evaluated=lambda: tf.io.gfile.exists(results_path(model_dir, step())),
      finished=lambda: step() >= config.train_steps)


def checkpoint_step(checkpoint_dir: str) -> int:
  """The global step of the latest checkpoint in `checkpoint_dir` (0 if none)."""
  path = tf.train.latest_checkpoint(checkpoint_dir)
  if not path:
    return 0
  return int(tf.train.load_checkpoint(path).get_tensor(
      'global_step/.ATTRIBUTES/VARIABLE_VALUE'))


def _until_preempted(trainer: trainer_lib.PanopticTrainer,
                     manager: tf.train.CheckpointManager, train_fn, *args):
  """Runs `train_fn(*args)`; on SIGTERM checkpoints the current step and exits.

  Raises:
    preemption.Preempted: after the checkpoint of the step training stopped at.
  """
  with preemption.SigtermWatcher() as watcher:
    trainer.stop_requested = watcher.requested
    try:
      return train_fn(*args)
    except preemption.Preempted as stopped:
      path = manager.save(checkpoint_number=stopped.step, check_interval=False)
      logging.warning('Preempted at step %d: saved %s; a restart resumes from it.',
                      stopped.step, path)
      raise
    finally:
      trainer.stop_requested = lambda: False


def _search_shipped_configs_first() -> None:
  """Makes gin resolve `include`s against the shipped configs first.

  gin tries its search paths in order, the working directory first; its
  Python-package reader then logged an E-level "Path not found" for every
  include before the shipped configs resolved it. gin can only append a search
  path, so the config root is moved to the front of its list.
  """
  root = config_files.config_root()
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  if root in prefixes:
    prefixes.remove(root)
  prefixes.insert(0, root)


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str],
              model_dir: Optional[str] = None) -> None:
  """Parses gin files and bindings, naming the flag of any bad one.

  A gin file is a path or the name of a shipped config (`coco/cmt_deeplab_s.gin`);
  `include` statements name shipped configs the same way. If `model_dir` holds a training run, its latest training config
  (`run_dir.training_config_path`, data paths included) is parsed first: the
  files and bindings then change only what they name.
  """
  _search_shipped_configs_first()
  gin_files = [config_files.resolve(path) for path in gin_files]
  run_config = run_dir.training_config_path(model_dir) if model_dir else None
  if run_config:
    logging.info('Starting from the run\'s config %s; --gin_file and --gin_param '
                 'override what they name.', run_config)
    try:
      gin.parse_config_file(run_config)
    except (ValueError, KeyError, SyntaxError) as e:
      raise ValueError(f'--model_dir={model_dir}: cannot parse {run_config}: {e}') from e
  try:
    gin.parse_config_files_and_bindings(gin_files, None, finalize_config=False)
  except (ValueError, KeyError, SyntaxError, OSError) as e:
    raise ValueError(f'--gin_file {list(gin_files)}: {e}') from e
  for param in gin_params:
    try:
      gin.parse_config(param)
    except (ValueError, KeyError, SyntaxError) as e:
      raise ValueError(f'--gin_param={param!r}: {e}') from e
  gin.finalize()
