"""ExperimentConfig.jit_compile: each replica's whole update under XLA.

One update of the same model from the same weights on the same batch, once
with the XLA-compiled step and once without: the loss terms and every variable
after the update (weights, Adam's effect, batch-norm statistics) must agree.
`jit_compile=True` makes XLA compile the function or fail, so a passing test
also shows that no host-side op (`py_function`, dynamic shape) is left in it.

Tolerances. XLA fuses and reorders the float32 sums (convolutions, softmaxes,
reductions), so values differ by float32 rounding, amplified through the
layers: 1e-5 relative on the losses. The update is compared as the change of
each variable; with Adam's epsilon 1 and learning rate 1 it is about the
(clipped) gradient itself, `g / (|g| + 1)`, so the tolerance is one on
gradients: 1e-4 of the largest change plus 1e-4 relative. Under
`mixed_bfloat16` every layer rounds to bfloat16 (8 bits of mantissa, 4e-3
relative) wherever the two executions round differently: 2e-2 relative on the
losses and 5e-2 of the largest change on the update.
"""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import trainer as trainer_lib

NUM_CLASSES, BATCH = 5, 2
# (losses rtol, update tolerance as a fraction of the largest change).
FLOAT32_TOLERANCE = (1e-5, 1e-4)
BFLOAT16_TOLERANCE = (2e-2, 5e-2)


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()
  tf_keras.mixed_precision.set_global_policy('float32')


def _examples(size, count, num_masks):
  batches = [cost.random_training_batch(size, size, NUM_CLASSES, num_masks, seed=seed)
             for seed in range(count)]
  return {key: tf.concat([b[key] for b in batches], 0) for key in batches[0]}


def _update(model, examples, batch, jit_compile, accumulation):
  """(loss terms, every model variable's value) after one update."""
  trainer = trainer_lib.PanopticTrainer(
      strategy=tf.distribute.get_strategy(), model=model,
      loss_fn=panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=batch),
      # Learning rate 1 and epsilon 1: each change is about the clipped gradient.
      optimizer_config=optimization.OptimizerConfig(
          train_steps=10, warmup_steps=0, learning_rate=1.0, epsilon=1.0,
          gradient_clip_norm=1.0),
      post_processor=None, evaluator=None,
      train_dataset_fn=lambda _: tf.data.Dataset.from_tensor_slices(examples).batch(
          batch // accumulation).repeat(),
      jit_compile=jit_compile, gradient_accumulation_steps=accumulation, seed=0)
  losses = trainer.train(tf.constant(1))
  return losses, [v.numpy() for v in model.variables]


def _assert_xla_matches(name, num_clusters, size, batch, accumulation, tolerance):
  model = builder.build_model(name, NUM_CLASSES, num_clusters)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  initial = [v.numpy() for v in model.variables]
  examples = _examples(size, batch, num_clusters)
  plain_losses, plain = _update(model, examples, batch, False, accumulation)
  for variable, value in zip(model.variables, initial):
    variable.assign(value)
  xla_losses, xla = _update(model, examples, batch, True, accumulation)
  loss_rtol, update_tolerance = tolerance
  terms = sorted(set(plain_losses) - {trainer_lib.LEARNING_RATE})
  assert panoptic_loss.TOTAL in terms and xla_losses.keys() == plain_losses.keys()
  for term in terms:
    assert xla_losses[term] == pytest.approx(plain_losses[term], rel=loss_rtol), term
  changes = [p - i for p, i in zip(plain, initial)]
  assert sum(np.any(c != 0.0) for c in changes) > len(changes) // 2  # Not vacuous.
  largest = max(np.abs(c).max() for c in changes)
  for variable, change, after, before in zip(model.variables, changes, xla, initial):
    np.testing.assert_allclose(after - before, change, rtol=update_tolerance,
                               atol=update_tolerance * largest, err_msg=variable.name)


# Each takes minutes on 2 cores, mostly tracing and XLA compilation: the tiny model's
# float32 step is the default suite's check that the whole step compiles; the rest
# are slow.
@pytest.mark.parametrize('policy, tolerance', [
    ('float32', FLOAT32_TOLERANCE),
    pytest.param('mixed_bfloat16', BFLOAT16_TOLERANCE, marks=pytest.mark.slow)])
def test_xla_update_matches_the_plain_update(policy, tolerance):
  tf_keras.mixed_precision.set_global_policy(policy)
  _assert_xla_matches('tiny', 8, 65, BATCH, 1, tolerance)


@pytest.mark.slow
def test_xla_update_with_recomputation_and_accumulation_matches():
  """The compiled micro-batch step and the compiled update from the sums."""
  gin.parse_config(["build_model.recompute = 'all'", 'PanopticLoss.recompute = True'])
  _assert_xla_matches('tiny', 8, 65, BATCH, 2, FLOAT32_TOLERANCE)


@pytest.mark.slow
def test_xla_update_of_cmt_deeplab_s_matches():
  _assert_xla_matches('cmt_deeplab_s', 128, 129, 1, 1, FLOAT32_TOLERANCE)
