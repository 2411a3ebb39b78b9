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
from cmt_deeplab_tf.training import optimization
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


def _train(model, examples, micro_batch, accumulation, updates):
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
      gradient_accumulation_steps=accumulation)
  losses = trainer.train(tf.constant(updates))
  return trainer, losses


@pytest.mark.slow
def test_accumulated_micro_batches_update_as_one_large_batch():
  model = builder.build_model('tiny', NUM_CLASSES, NUM_CLUSTERS)
  train_lib.create_all_variables(model, tf.distribute.get_strategy())
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
    train_lib.micro_batch_size(train_lib.ExperimentConfig(train_batch_size=8,
                                                          gradient_accumulation_steps=3))
