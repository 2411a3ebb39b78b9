"""End-to-end tests of the training system on the synthetic set, and its errors."""
import gc
import glob
import json
import logging
import os
import re
import shutil

import gin
import pytest
import numpy as np
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import config_files
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import train_lib
from tests.data import corrupt_records



@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


def _tiny_config(tfrecord_dir, **overrides):
  gin.bind_parameter('build_model.name', 'tiny')
  gin.bind_parameter('build_model.num_clusters', 8)
  gin.bind_parameter('OptimizerConfig.warmup_steps', 1)
  settings = dict(dataset_name='synthetic',
                  train_file_pattern=os.path.join(tfrecord_dir, 'train-*'),
                  eval_file_pattern=os.path.join(tfrecord_dir, 'val-*'),
                  train_batch_size=2, eval_batch_size=2, train_crop_size=(97, 97),
                  eval_crop_size=(97, 97), max_num_masks=12, train_steps=4,
                  steps_per_loop=2, summary_interval=2, checkpoint_interval=2,
                  eval_interval=4, seed=0)
  settings.update(overrides)
  return experiment.ExperimentConfig(**settings)


@pytest.mark.parametrize('name', config_files.config_names())
def test_every_gin_config_parses_and_names_a_model(name):
  experiment.parse_gin([name], [])
  if os.path.basename(name) != 'base.gin':  # Bases are included by the model configs.
    assert gin.query_parameter('build_model.name') in builder.MODELS
  config = experiment.ExperimentConfig()
  assert config.train_steps > 0 and config.dataset_name in ('coco', 'cityscapes', 'synthetic')


def test_unknown_gin_binding_names_the_flag():
  with pytest.raises(ValueError, match=r"--gin_param='ExperimentConfig.no_such_setting = 1'"):
    experiment.parse_gin([], ['ExperimentConfig.no_such_setting = 1'])
  with pytest.raises(ValueError, match='--gin_param'):
    experiment.parse_gin([], ['NoSuchConfigurable.x = 1'])


def test_missing_gin_file_names_the_flag(tmp_path):
  with pytest.raises(ValueError,
                     match=r'--gin_file=.*nope\.gin is neither a file nor a shipped config'):
    experiment.parse_gin([str(tmp_path / 'nope.gin')], [])


def test_unwritable_model_dir_names_the_flag(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match=r'--model_dir=.*a_file/run is not writable'):
    train_lib.check_model_dir(str(blocker / 'run'))


def test_file_pattern_matching_nothing_is_named(tfrecord_dir, tmp_path):
  config = _tiny_config(tfrecord_dir, train_file_pattern=str(tmp_path / 'none-*'))
  with pytest.raises(ValueError, match='none-.*matches no file'):
    train_lib.run('train', str(tmp_path / 'run'), tf.distribute.get_strategy(), config)


# Slow: 30-140 s of training on 2 cores; the default suite keeps under 15 minutes.
@pytest.mark.slow
def test_train_eval_resume_and_reject_another_architecture(tfrecord_dir, tmp_path, caplog,
                                                          capsys):
  model_dir = str(tmp_path / 'run')
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_lib.run('train_and_eval', model_dir, strategy, _tiny_config(tfrecord_dir))
  assert 'train | step' not in capsys.readouterr().out  # Orbit's lines: the log only.
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-4')
  with open(os.path.join(model_dir, 'eval', 'results-4.json')) as f:
    results = json.load(f)
  assert results['step'] == 4 and 0.0 <= results['pq'] <= 100.0 and 'per_class' in results
  assert 'build_model.name' in open(os.path.join(model_dir, run_dir.CONFIG_FILE)).read()
  assert glob.glob(os.path.join(model_dir, 'train', 'events.*'))
  # Every trainable model variable (training-only heads included) was updated.
  names, frozen = _unchanged_model_variables(model_dir, 2, 4)
  assert any('semantic_head' in n for n in names)
  assert not frozen, frozen[:5]

  # Resuming restores step 4 and trains only the two missing steps.
  gin.clear_config()
  reader = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-4'))
  config = _tiny_config(tfrecord_dir, train_steps=6)
  gin.bind_parameter('OptimizerConfig.gradient_clip_norm', 2.5)
  with caplog.at_level(logging.INFO):
    output = train_lib.run('train', model_dir, strategy, config)
  assert any('ckpt-4' in r.getMessage() and 'restor' in r.getMessage().lower()
             for r in caplog.records)
  assert 'Gradient clipping: global norm 2.5, applied in the train step' in caplog.text
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-6')
  assert reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 4
  assert set(output) >= {'total', 'pq_style_class', 'mask_id'}

  # Continuous evaluation picks up the newest checkpoint and stops once training is done.
  gin.clear_config()
  for stale in glob.glob(os.path.join(model_dir, 'eval', 'results-*.json')):
    os.remove(stale)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    train_lib.run('continuous_eval', model_dir, strategy,
                  _tiny_config(tfrecord_dir, train_steps=6, continuous_eval_timeout=1))
    gc.collect()  # Unmatched checkpoint values are reported when the status is deleted.
  assert [os.path.basename(p) for p in glob.glob(os.path.join(model_dir, 'eval', '*.json'))
          ] == ['results-6.json']
  # Evaluation restores the model only, and says nothing about the optimizer's slots.
  assert 'could not be found in the restored object' not in caplog.text

  # A model with another number of clusters cannot load these checkpoints.
  gin.clear_config()
  config = _tiny_config(tfrecord_dir)
  gin.bind_parameter('build_model.num_clusters', 12)
  with pytest.raises(ValueError, match='does not match the configured model'):
    train_lib.run('eval', model_dir, strategy, config)


@pytest.mark.slow  # Traces the bfloat16 step and its evaluation: ~45 s.
def test_mixed_bfloat16_training_updates_float32_variables(tfrecord_dir, tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  config = _tiny_config(tfrecord_dir, mixed_precision='mixed_bfloat16')
  trainer = train_lib.run('train', str(tmp_path / 'run'), strategy, config,
                          return_trainer=True)
  # run() restores the process-wide policy it set.
  assert tf_keras.mixed_precision.global_policy().name == 'float32'
  layers = list(_all_layers(trainer.model))
  assert any(layer.compute_dtype == 'bfloat16' for layer in layers)
  assert {v.dtype for v in trainer.model.trainable_variables} == {tf.float32}
  losses = trainer.loss_averages()
  assert all(np.isfinite(value) for value in losses.values()), losses
  # The float32 master weights take the bfloat16 gradients: every one moves.
  model_dir = str(tmp_path / 'run')
  names, frozen = _unchanged_model_variables(model_dir, 2, 4)
  reader = tf.train.load_checkpoint(model_dir)
  assert names and all(reader.get_tensor(n).dtype == np.float32 for n in names)
  assert not frozen, frozen[:5]


def _unchanged_model_variables(model_dir, step_a, step_b):
  """(trainable model variable names, those equal in checkpoints step_a and step_b)."""
  before, after = (tf.train.load_checkpoint(os.path.join(model_dir, f'ckpt-{s}'))
                   for s in (step_a, step_b))
  names = [n for n in before.get_variable_to_shape_map()
           if n.startswith('model/') and n.endswith('VARIABLE_VALUE')
           and 'moving_' not in n and 'OPTIMIZER_SLOT' not in n]
  return names, [n for n in names if (before.get_tensor(n) == after.get_tensor(n)).all()]


def _all_layers(layer):
  yield layer
  for child in getattr(layer, '_self_tracked_trackables', []):
    if isinstance(child, tf_keras.layers.Layer):
      yield from _all_layers(child)


def test_warmup_longer_than_training_is_rejected():
  with pytest.raises(ValueError, match=r'warmup_steps \(5000\) must be smaller than '
                                       r'train_steps \(100\)'):
    optimization.OptimizerConfig(train_steps=100, warmup_steps=5000)


def _corrupt_copy(tfrecord_dir, target):
  """The synthetic train shards with record 1 of the first one undecodable."""
  os.makedirs(target)
  for path in glob.glob(os.path.join(tfrecord_dir, 'train-*')) + [
      os.path.join(tfrecord_dir, 'class_table.json')]:
    shutil.copy(path, target)
  bad_shard = sorted(glob.glob(os.path.join(target, 'train-*')))[0]
  corrupt_records.replace_image(bad_shard, 1)
  return os.path.join(target, 'train-*'), bad_shard


# Slow: 30-140 s of training on 2 cores; the default suite keeps under 15 minutes.
@pytest.mark.slow
def test_a_bad_training_record_stops_the_run_naming_it(tfrecord_dir, tmp_path):
  pattern, bad_shard = _corrupt_copy(tfrecord_dir, str(tmp_path / 'records'))
  # Six steps of two read the first 12 examples; with one-example shuffling and a
  # fixed interleave order they are one full pass, so the bad record is among them
  # however the machine schedules the readers. No periodic checkpoint, so any
  # checkpoint would be one written on the failure.
  config = _tiny_config(tfrecord_dir, train_file_pattern=pattern, train_steps=6,
                        checkpoint_interval=100)
  gin.bind_parameter('panoptic_dataset.shuffle_buffer_size', 1)
  gin.bind_parameter('panoptic_dataset.deterministic', True)
  with pytest.raises(record_errors.BadRecordsError,
                     match=f'{re.escape(bad_shard)}#1 undecodable'):
    train_lib.run('train', str(tmp_path / 'run'), tf.distribute.get_strategy(), config)
  assert not tf.train.latest_checkpoint(str(tmp_path / 'run'))


@pytest.mark.slow
def test_skipped_training_records_are_counted(tfrecord_dir, tmp_path):
  pattern, _ = _corrupt_copy(tfrecord_dir, str(tmp_path / 'records'))
  config = _tiny_config(tfrecord_dir, train_file_pattern=pattern, train_steps=6)
  gin.bind_parameter('panoptic_dataset.skip_bad_records', True)
  gin.bind_parameter('panoptic_dataset.shuffle_buffer_size', 1)  # 12 examples: a pass.
  trainer = train_lib.run('train', str(tmp_path / 'run'), tf.distribute.get_strategy(),
                          config, return_trainer=True)
  assert int(trainer.skipped_records.numpy()) >= 1
  events = glob.glob(os.path.join(str(tmp_path / 'run'), 'train', 'events.*'))
  tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value}
  assert 'skipped_records' in tags
