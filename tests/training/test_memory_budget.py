"""Gradient accumulation and float16 loss scaling of the trainer."""
import logging

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import train_lib
from cmt_deeplab_tf.training import trainer as trainer_lib
from tests.training import test_train_lib

NUM_CLASSES, NUM_CLUSTERS, SIZE, BATCH = 5, 8, 33, 4


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _examples(count):
  batches = [cost.random_training_batch(SIZE, SIZE, NUM_CLASSES, NUM_CLUSTERS, seed=seed)
             for seed in range(count)]
  return {key: tf.concat([b[key] for b in batches], 0) for key in batches[0]}


def _train(model, examples, micro_batch, accumulation, updates, **kwargs):
  trainer = trainer_lib.PanopticTrainer(
      strategy=tf.distribute.get_strategy(), model=model,
      loss_fn=panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=BATCH),
      # Adam's epsilon 1 keeps each update proportional to its gradient (see
      # distributed_run.py), so summation order cannot flip near-zero updates.
      optimizer_config=optimization.OptimizerConfig(train_steps=10, warmup_steps=1,
                                                    epsilon=1.0),
      post_processor=None, evaluator=None,
      train_dataset_fn=lambda _: tf.data.Dataset.from_tensor_slices(examples).batch(
          micro_batch).repeat(),
      gradient_accumulation_steps=accumulation, **kwargs)
  losses = trainer.train(tf.constant(updates))
  return trainer, losses


@pytest.mark.slow
def test_accumulated_micro_batches_update_as_one_large_batch():
  model = builder.build_model('tiny', NUM_CLASSES, NUM_CLUSTERS)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  # Batch norm in inference mode: the only thing that sees the batch split.
  for layer in model.submodules:
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      layer.trainable = False
  initial = {v.ref(): v.numpy() for v in model.variables}
  examples = _examples(2 * BATCH)
  large, large_losses = _train(model, examples, BATCH, 1, updates=2)
  after_large = {v.ref(): v.numpy() for v in model.trainable_variables}
  for variable in model.variables:
    variable.assign(initial[variable.ref()])
  micro, micro_losses = _train(model, examples, BATCH // 2, 2, updates=2)
  # Steps, optimizer iterations and so the learning-rate schedule count updates.
  assert int(micro.global_step.numpy()) == 2
  assert int(micro.optimizer.iterations.numpy()) == 2
  assert micro_losses[panoptic_loss.TOTAL] == pytest.approx(
      large_losses[panoptic_loss.TOTAL], rel=1e-5)
  for variable in model.trainable_variables:
    np.testing.assert_allclose(variable.numpy(), after_large[variable.ref()], rtol=1e-4,
                               atol=1e-6, err_msg=variable.name)
  moved = [not np.allclose(value, initial[ref]) for ref, value in after_large.items()]
  assert sum(moved) > len(moved) // 2


def test_accumulation_must_divide_the_batch():
  with pytest.raises(ValueError, match='gradient_accumulation_steps=3 .*train_batch_size=8'):
    experiment.micro_batch_size(experiment.ExperimentConfig(train_batch_size=8,
                                                          gradient_accumulation_steps=3))


@pytest.mark.slow  # ~2 min on 2 cores; keeps the default suite under 15 minutes.
def test_float16_update_that_overflows_is_skipped_and_logged(caplog):
  tf_keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    model = builder.build_model('tiny', NUM_CLASSES, NUM_CLUSTERS)
    task_lib.create_all_variables(model, tf.distribute.get_strategy())
    initial = [v.numpy() for v in model.trainable_variables]
    # A loss scale of 2**40 overflows float16 (max 65504) in the backward pass.
    with caplog.at_level(logging.WARNING):
      trainer, losses = _train(model, _examples(2), 2, 1, updates=1,
                               initial_loss_scale=2.0**40)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  assert all(np.isfinite(value) for value in losses.values()), losses
  assert losses[trainer_lib.SKIPPED_UPDATES] == 1
  assert losses[trainer_lib.LOSS_SCALE] == 2.0**39  # Halved by the overflow.
  assert any('skipped 1 update' in r.getMessage() for r in caplog.records)
  for variable, value in zip(model.trainable_variables, initial):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


RECOMPUTE_EVERYTHING = ["build_model.recompute = 'all'",
                        'PanopticLoss.recompute = True']


@pytest.mark.slow
@pytest.mark.parametrize('recompute', [False, True])
def test_mixed_float16_training_end_to_end(tfrecord_dir, tmp_path, recompute):
  config = test_train_lib._tiny_config(  # pylint: disable=protected-access
      tfrecord_dir, mixed_precision='mixed_float16', initial_loss_scale=128.0)
  gin.parse_config(RECOMPUTE_EVERYTHING if recompute else [])
  try:
    trainer = train_lib.run('train', str(tmp_path / 'run'), tf.distribute.get_strategy(),
                            config, return_trainer=True)
  finally:
    gin.clear_config()
  assert tf_keras.mixed_precision.global_policy().name == 'float32'
  assert isinstance(trainer.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  losses = trainer.loss_averages()
  assert all(np.isfinite(value) for value in losses.values()), losses
  # The float32 master weights take the unscaled float16 gradients: every one moves.
  names, frozen = test_train_lib._unchanged_model_variables(  # pylint: disable=protected-access
      str(tmp_path / 'run'), 2, 4)
  assert names and not frozen, frozen[:5]
