"""The experiment: its gin-configured settings, how gin is parsed, and what follows.

`ExperimentConfig` holds a run's data, schedule and bookkeeping (the model is
`build_model`'s, the objective `PanopticLoss`'s, the optimizer
`OptimizerConfig`'s: each its own gin configurable). `parse_gin` reads the gin
files and bindings of a command line; the functions below derive from the
settings what every part of a run shares: the class table, the seeds, the
micro-batch size and the Keras dtype policy. (Model Garden keeps the same in
`official/core/config_definitions.py` and `train_utils.py`.)
"""
import contextlib
import dataclasses
from typing import Optional, Sequence, Tuple

from absl import logging
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import config_files
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import tfds_source as tfds_source_lib


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
  # XLA-compiles each replica's whole update (`trainer`): forward, losses,
  # gradients, clipping, optimizer updates.
  jit_compile: bool = False
  # Runs the steps_per_loop steps of a train loop in one tf.while_loop, without a
  # host round trip per step; a preemption then stops training at the end of the
  # loop instead of the step. None: on under TPUStrategy, off elsewhere.
  in_graph_loop: Optional[bool] = None
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


@contextlib.contextmanager
def dtype_policy(name: Optional[str]):
  """Sets the Keras dtype policy `name` (None: unchanged), then restores the old one."""
  previous = tf_keras.mixed_precision.global_policy()
  if name:
    tf_keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


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
  `include` statements name shipped configs the same way. If `model_dir` holds a
  training run, its latest training config (`run_dir.training_config_path`, data
  paths included) is parsed first: the files and bindings then change only what
  they name.
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
