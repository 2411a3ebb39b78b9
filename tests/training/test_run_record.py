"""The model dir is the record of a run: its config is the default, nothing is overwritten."""
import json
import logging
import os
import time

import gin
import pytest
import tensorflow as tf

from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import train_lib


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


def _tiny_params(tfrecord_dir):
  return ["build_model.name = 'tiny'", 'build_model.num_clusters = 8',
          'OptimizerConfig.warmup_steps = 1', "ExperimentConfig.dataset_name = 'synthetic'",
          f"ExperimentConfig.train_file_pattern = '{tfrecord_dir}/train-*'",
          f"ExperimentConfig.eval_file_pattern = '{tfrecord_dir}/val-*'",
          'ExperimentConfig.train_batch_size = 2', 'ExperimentConfig.eval_batch_size = 2',
          'ExperimentConfig.train_crop_size = (65, 65)',
          'ExperimentConfig.eval_crop_size = (97, 97)', 'ExperimentConfig.max_num_masks = 12',
          'ExperimentConfig.train_steps = 2', 'ExperimentConfig.steps_per_loop = 2',
          'ExperimentConfig.checkpoint_interval = 2', 'ExperimentConfig.seed = 0',
          'ExperimentConfig.continuous_eval_timeout = 300']


def _read(path):
  with open(path) as f:
    return f.read()


def test_a_new_model_dir_has_no_config_to_start_from(tmp_path):
  experiment.parse_gin([], ['ExperimentConfig.train_steps = 7'], str(tmp_path / 'new'))
  assert experiment.ExperimentConfig().train_steps == 7
  assert run_dir.training_config_path(str(tmp_path / 'new')) is None


def _parse(model_dir, *params):
  gin.clear_config()
  experiment.parse_gin([], list(params), model_dir)


@pytest.mark.slow  # Four runs of the train CLI's modes in one process: ~2 min.
def test_eval_resume_and_continuous_eval_keep_the_record(tfrecord_dir, tmp_path, caplog):
  model_dir = str(tmp_path / 'run')
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config_path = os.path.join(model_dir, run_dir.CONFIG_FILE)
  experiment.parse_gin([], _tiny_params(tfrecord_dir), model_dir)
  train_lib.run('train', model_dir, strategy)
  training_config = _read(config_path)
  assert 'ExperimentConfig.train_steps = 2' in training_config

  # `--mode=eval --model_dir` alone: the run's config, data paths included.
  _parse(model_dir)
  train_lib.run('eval', model_dir, strategy)
  first = _read(os.path.join(model_dir, 'eval', 'results-2.json'))
  assert json.loads(first)['step'] == 2
  eval_config = _read(os.path.join(model_dir, 'eval', 'operative_config-2.gin'))
  assert f"'{tfrecord_dir}/val-*'" in eval_config  # Gin may wrap the long line.

  # Evaluated again with other post-processing: a new file beside the first.
  _parse(model_dir, 'PostProcessor.thing_class_threshold = 0.95')
  train_lib.run('eval', model_dir, strategy)
  assert _read(os.path.join(model_dir, 'eval', 'results-2.json')) == first
  assert json.loads(_read(os.path.join(model_dir, 'eval', 'results-2.1.json')))['step'] == 2
  assert 'PostProcessor.thing_class_threshold = 0.95' in _read(
      os.path.join(model_dir, 'eval', 'operative_config-2.1.gin'))

  # Continuous evaluation: step 2 is the last one and has results; it ends at once.
  records = lambda: sorted(n for n in os.listdir(os.path.join(model_dir, 'eval'))
                          if n.endswith(('.json', '.gin')))
  before = records()
  _parse(model_dir)
  start = time.time()
  with caplog.at_level(logging.INFO):
    train_lib.run('continuous_eval', model_dir, strategy)
  assert time.time() - start < 300  # Not ended by continuous_eval_timeout.
  assert any('ckpt-2 was evaluated before' in r.getMessage() for r in caplog.records)
  assert records() == before

  # A resume with another model is refused, naming the binding.
  _parse(model_dir, 'build_model.num_clusters = 12')
  with pytest.raises(ValueError, match=r'build_model\.num_clusters = 12 \(the run: 8\)'):
    train_lib.run('train', model_dir, strategy)

  # A resume with more steps trains on; its config goes beside the first one.
  _parse(model_dir, 'ExperimentConfig.train_steps = 3')
  train_lib.run('train', model_dir, strategy)
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-3')
  assert _read(config_path) == training_config
  resumed = os.path.join(model_dir, 'operative_config-2.gin')
  assert run_dir.training_config_path(model_dir) == resumed
  assert 'ExperimentConfig.train_steps = 3' in _read(resumed)
