"""The model dir of a training run, as training writes it and serving reads it.

  operative_config.gin   the gin config the run used (`CONFIG_FILE`);
  class_table.json       the class table the model predicts (`class_table`);
  ckpt-*                 checkpoints.

Training (`training.train_lib`) writes the first two; export, predict and
visualize (`serving.export_lib`) rebuild the model from them. This module sits
below both, so neither imports the other.
"""
import os

import gin
import tensorflow as tf

from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib

CONFIG_FILE = 'operative_config.gin'


def write_operative_config(model_dir: str) -> None:
  """Writes the process's operative gin config into the model dir."""
  with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE), 'w') as f:
    f.write(gin.operative_config_str())


def parse_operative_config(model_dir: str) -> None:
  """Replaces the process's gin config with the run's operative config.

  Bindings of configurables this process has not imported (the training-only
  ones: ExperimentConfig, OptimizerConfig, panoptic_dataset, ...) are skipped;
  the model's and the post-processing's apply.
  """
  config_path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(config_path):
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
