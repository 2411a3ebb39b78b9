"""PanopticTask: the model, inputs, losses and initialisation it builds from a config."""
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import task as task_lib


@pytest.fixture(autouse=True)
def tiny_model():
  gin.clear_config()
  gin.bind_parameter('build_model.name', 'tiny')
  gin.bind_parameter('build_model.num_clusters', 8)
  yield
  gin.clear_config()


def _task(tfrecord_dir, **overrides):
  settings = dict(train_file_pattern=os.path.join(tfrecord_dir, 'train-*'),
                  eval_file_pattern=os.path.join(tfrecord_dir, 'val-*'),
                  train_batch_size=2, eval_batch_size=2, train_crop_size=(65, 65),
                  eval_crop_size=(97, 97), max_num_masks=12, seed=0)
  settings.update(overrides)
  return task_lib.PanopticTask(experiment.ExperimentConfig(**settings))


def _model(task, seed):
  tf_keras.utils.set_random_seed(seed)
  return task.build_model()


def test_build_model_predicts_the_class_table_with_every_variable_fresh(tfrecord_dir):
  task = _task(tfrecord_dir)
  model = _model(task, seed=0)
  # The class table beside the shards decides: its classes + no-object.
  outputs = model(tf.zeros([1, 33, 33, 3]), training=False)
  assert outputs[common.CLASS_LOGITS].shape[-1] == task.info.num_classes + 1
  # The training-only semantic head exists before the first (traced) step ...
  assert any('semantic_head' in v.name for v in model.trainable_variables)
  # ... and the forward pass that made it left no batch-norm statistics behind.
  means = [v for v in model.non_trainable_variables if 'moving_mean' in v.name]
  variances = [v for v in model.non_trainable_variables if 'moving_variance' in v.name]
  assert means and len(means) == len(variances)
  assert all(np.all(v.numpy() == 0.0) for v in means)
  assert all(np.all(v.numpy() == 1.0) for v in variances)


def test_build_inputs_yields_micro_batches_and_skips_the_restored_steps(tfrecord_dir):
  gin.bind_parameter('panoptic_dataset.deterministic', True)  # Fixed element order.
  task = _task(tfrecord_dir, train_batch_size=4, gradient_accumulation_steps=2,
               eval_batch_size=3)
  train = list(task.build_inputs(True).take(3))
  for batch in train:  # 4 images per update, in 2 micro-batches of 2.
    assert batch[common.IMAGE].shape == (2, 65, 65, 3)
    assert batch[common.PANOPTIC].shape[:3] == (2, 65, 65)
  evaluation = next(iter(task.build_inputs(False)))
  assert evaluation[common.IMAGE].shape == (3, 97, 97, 3)
  # Resuming at step 1 skips that step's two micro-batches: the third comes first.
  resumed = next(iter(task.build_inputs(True, start_step=1)))
  for key in (common.IMAGE, common.PANOPTIC):
    np.testing.assert_array_equal(resumed[key].numpy(), train[2][key].numpy())
  assert not np.array_equal(train[0][common.IMAGE].numpy(), train[2][common.IMAGE].numpy())


def test_build_inputs_names_an_unset_pattern(tfrecord_dir):
  with pytest.raises(ValueError, match='ExperimentConfig.eval_file_pattern is not set'):
    _task(tfrecord_dir, eval_file_pattern=None).build_inputs(False)


def test_build_losses_divide_by_the_global_batch(tfrecord_dir):
  # The same micro-batch of 2 in a batch of 2, and in a batch of 4 (2 micro-batches):
  # each term of the latter is half, so the summed micro-batch gradients are the mean's.
  whole = _task(tfrecord_dir)
  half = _task(tfrecord_dir, train_batch_size=4, gradient_accumulation_steps=2)
  batch = next(iter(whole.build_inputs(True)))
  features = {k: v for k, v in batch.items() if v.dtype != tf.string}
  outputs = _model(whole, seed=0)(features[common.IMAGE], training=True)
  losses, halves = whole.build_losses()(features, outputs), half.build_losses()(
      features, outputs)
  assert set(losses) >= {panoptic_loss.TOTAL, 'pq_style_class', 'mask_id'}
  assert float(losses[panoptic_loss.TOTAL]) > 0.0
  for name, value in losses.items():
    np.testing.assert_allclose(halves[name].numpy(), value.numpy() / 2, rtol=1e-6,
                               err_msg=name)


def _values(variables):
  return [v.numpy() for v in variables]


def _assert_equal(actual, expected):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    np.testing.assert_array_equal(a, e)


def test_initialize_restores_the_saved_values(tfrecord_dir, tmp_path):
  source = _model(_task(tfrecord_dir), seed=1)
  path = tf.train.Checkpoint(model=source).write(str(tmp_path / 'init'))
  saved = _values(source.variables)

  # No init checkpoint: the model keeps its own initial values.
  plain_task = _task(tfrecord_dir)
  model = _model(plain_task, seed=2)
  own = _values(model.variables)
  plain_task.initialize(model)
  _assert_equal(_values(model.variables), own)
  assert not np.array_equal(own[0], saved[0])

  _task(tfrecord_dir, init_checkpoint=path).initialize(model)
  _assert_equal(_values(model.variables), saved)


def test_initialize_the_backbone_only(tfrecord_dir, tmp_path):
  source = _model(_task(tfrecord_dir), seed=1)
  path = tf.train.Checkpoint(model=source).write(str(tmp_path / 'init'))
  task = _task(tfrecord_dir, init_checkpoint=str(tmp_path),  # A folder with one.
               init_checkpoint_modules='backbone')
  model = _model(task, seed=2)
  backbone = {id(v) for v in model.backbone.variables}
  before = [v.numpy() for v in model.variables]
  task.initialize(model)
  assert 0 < len(backbone) < len(model.variables)
  for theirs, ours, initial in zip(source.variables, model.variables, before):
    expected = theirs.numpy() if id(ours) in backbone else initial
    np.testing.assert_array_equal(ours.numpy(), expected, err_msg=ours.name)
  del path
