"""The kMaX demo config trains and evaluates with the project's trainer."""
import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.training import train_lib


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.slow  # Two steps and an eval: 20 min on the loaded 2-core machine.
def test_kmax_demo_trains_and_evaluates(tfrecord_dir, tmp_path):
  model_dir = str(tmp_path / 'run')
  train_lib.parse_gin(['synthetic/kmax_demo.gin'], [
      f"ExperimentConfig.train_file_pattern = '{tfrecord_dir}/train-*'",
      f"ExperimentConfig.eval_file_pattern = '{tfrecord_dir}/val-*'",
      'ExperimentConfig.train_batch_size = 2',
      'ExperimentConfig.train_crop_size = (65, 65)',
      'ExperimentConfig.eval_crop_size = (129, 129)',
      'ExperimentConfig.train_steps = 2', 'ExperimentConfig.steps_per_loop = 1',
      'ExperimentConfig.checkpoint_interval = 2',
      'ExperimentConfig.eval_steps = 1', 'OptimizerConfig.warmup_steps = 0'])
  assert gin.query_parameter('build_model.name') == 'kmax_tiny'
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_lib.run('train', model_dir, strategy)
  checkpoint = tf.train.load_checkpoint(model_dir)
  assert checkpoint.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 2
  train_lib.run('eval', model_dir, strategy)
  with open(os.path.join(model_dir, 'eval', 'results-2.json')) as f:
    results = json.load(f)
  assert np.isfinite(results['pq'] if 'pq' in results else
                     next(iter(results.values())))
