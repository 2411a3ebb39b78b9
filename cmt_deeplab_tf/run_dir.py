"""The model dir of a training run, as training writes it and serving reads it.

  operative_config.gin   the gin config training started with (`CONFIG_FILE`),
                         written once;
  operative_config-<s>.gin  the config of a resume at step s, when it differs
                         (e.g. more train_steps; the model bindings cannot);
  class_table.json       the class table the model predicts (`class_table`);
  ckpt-*                 checkpoints;
  eval/                  results and the config of each evaluation.

Training (`training.train_lib`) writes them; evaluation, export, predict and
visualize rebuild the model from the latest training config
(`training_config_path`). No file is ever overwritten. This module sits below
training and serving, so neither imports the other.
"""
import os
import re
from typing import Dict, Optional

import gin
import tensorflow as tf

from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib

CONFIG_FILE = 'operative_config.gin'


_RESUME_CONFIG = re.compile(r'^operative_config-(\d+)\.gin$')
# Bindings of configurables defined here are the model's: a resume cannot change them.
_MODEL_PACKAGE = 'cmt_deeplab_tf.modeling'


def training_config_path(model_dir: str) -> Optional[str]:
  """The run's latest training config: its last resume's, else `CONFIG_FILE`.

  None if the model dir has none (not a training run, or one not started yet).
  """
  if not tf.io.gfile.exists(os.path.join(model_dir, CONFIG_FILE)):
    return None
  resumes = {int(m.group(1)): name for name in tf.io.gfile.listdir(model_dir)
             if (m := _RESUME_CONFIG.match(name))}
  return os.path.join(model_dir, resumes[max(resumes)] if resumes else CONFIG_FILE)


def record_training_config(model_dir: str, step: int) -> Optional[str]:
  """Records the process's operative config as the run's training config.

  A new run writes `CONFIG_FILE`. A resume at `step` whose config differs from
  the run's latest one writes `operative_config-<step>.gin` (call
  `check_model_bindings` before restoring); an existing file is kept.

  Returns:
    The path written, or None.
  """
  latest = training_config_path(model_dir)
  text = gin.operative_config_str()
  if latest is None:
    path = os.path.join(model_dir, CONFIG_FILE)
  else:
    path = os.path.join(model_dir, f'operative_config-{step}.gin')
    if _read(latest) == text or tf.io.gfile.exists(path):
      return None
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(text)
  return path


def _read(path: str) -> str:
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def check_model_bindings(model_dir: str) -> None:
  """Refuses a resume whose model bindings differ from the run's.

  Compares the process's operative config with the run's training config, for
  the parameters of the model's configurables (`cmt_deeplab_tf.modeling`:
  `build_model` and the layers) that both list. Data and schedule bindings
  (file patterns, train_steps, ...) may change.

  Raises:
    ValueError: naming every differing binding with both values.
  """
  latest = training_config_path(model_dir)
  if latest is None:
    return
  recorded = _model_bindings(_read(latest))
  current = _model_bindings(gin.operative_config_str())
  differences = [f'{key} = {current[key]} (the run: {recorded[key]})'
                 for key in sorted(recorded.keys() & current.keys())
                 if recorded[key] != current[key]]
  if differences:
    raise ValueError(
        f'--model_dir={model_dir} was trained with other model bindings ({latest}); '
        f'its checkpoints are another model. Differing: {"; ".join(differences)}. '
        'Use another --model_dir, or drop these bindings to resume.')


class _References(gin.config_parser.ParserDelegate):
  """Keeps configurable references and macros as their text, for comparison."""

  def configurable_reference(self, scoped_name, evaluate):
    return f'@{scoped_name}{"()" if evaluate else ""}'

  def macro(self, macro_name):
    return f'%{macro_name}'


def _model_bindings(text: str) -> Dict[str, str]:
  """{'[scope/]configurable.parameter': repr(value)} of the model's bindings in `text`."""
  bindings = {}
  for statement in gin.config_parser.ConfigParser(text, _References()):
    if not isinstance(statement, gin.config_parser.BindingStatement):
      continue
    try:
      module = gin.get_configurable(statement.selector).__module__
    except KeyError:  # Not registered in this process: not the model's.
      continue
    if module.startswith(_MODEL_PACKAGE):
      scope = f'{statement.scope}/' if statement.scope else ''
      bindings[f'{scope}{statement.selector}.{statement.arg_name}'] = repr(statement.value)
  return bindings


def parse_operative_config(model_dir: str) -> None:
  """Replaces the process's gin config with the run's latest training config.

  Bindings of configurables this process has not imported (the training-only
  ones: ExperimentConfig, OptimizerConfig, panoptic_dataset, ...) are skipped;
  the model's and the post-processing's apply.
  """
  config_path = training_config_path(model_dir)
  if config_path is None:
    raise ValueError(f'--model_dir={model_dir} has no {CONFIG_FILE} '
                     '(is it the model dir of a training run?).')
  gin.clear_config()
  try:
    with gin.unlock_config():
      gin.parse_config_file(config_path, skip_unknown=True)
  except (ValueError, KeyError, SyntaxError) as e:
    raise ValueError(f'Cannot parse {config_path}: {e}') from e


def read_class_table(model_dir: str) -> dataset_info_lib.DatasetInfo:
  """The class table of a training run."""
  info = class_table.find_class_table(model_dir)
  if info is None:
    raise ValueError(
        f'--model_dir={model_dir} has no {class_table.CLASS_TABLE_FILE}; training writes '
        'it (for a run made before it did, copy the one beside its shards).')
  return info


def record_class_table(model_dir: str, info: dataset_info_lib.DatasetInfo) -> None:
  """Writes the run's class table, refusing one that differs from the recorded one.

  Raises:
    ValueError: if the model dir was trained for other classes; its checkpoints
      would not fit (or, with as many classes, would mean other things).
  """
  recorded = class_table.find_class_table(model_dir)
  if recorded is not None and recorded != info:
    raise ValueError(
        f'--model_dir={model_dir} was trained for {dataset_info_lib.describe(recorded)} '
        f'({class_table.class_table_path(model_dir)}), but the data are '
        f'{dataset_info_lib.describe(info)}; its checkpoints do not match this class '
        'table. Use another --model_dir.')
  if recorded is None:
    class_table.write_class_table(model_dir, info)
