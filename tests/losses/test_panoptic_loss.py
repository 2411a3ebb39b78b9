"""PanopticLoss: composition, deep supervision, RFN, optional keys, global batch."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.losses import loss_targets
from cmt_deeplab_tf.losses import matching as matching_lib
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.losses import pq_style

NUM_CLASSES, NUM_MASKS, NUM_PRED, DIM = 4, 5, 6, 8
HEIGHT, WIDTH = 17, 13  # Mask logits at stride 4: 5 x 4.


def make_targets(batch, seed=0):
  rng = np.random.default_rng(seed)
  mask_index = rng.integers(-1, 3, (batch, HEIGHT, WIDTH)).astype(np.int32)
  gt_classes = np.tile(np.array([[0, 3, 1, NUM_CLASSES, NUM_CLASSES]], np.int32),
                       [batch, 1])
  semantic = np.where(mask_index >= 0, gt_classes[0][np.maximum(mask_index, 0)], 255)
  return {common.MASK_INDEX: mask_index,
          common.PIXEL_WEIGHT: (mask_index >= 0).astype(np.float32),
          common.SEMANTIC: semantic.astype(np.int32),
          common.GT_CLASSES: gt_classes,
          common.GT_IS_THING: np.tile([[1, 0, 1, 0, 0]], [batch, 1]).astype(np.float32),
          common.GT_VALID: np.tile([[1, 1, 1, 0, 0]], [batch, 1]).astype(np.float32)}


def make_outputs(batch, seed=0, with_optional=True):
  rng = np.random.default_rng(seed + 100)
  h, w = -(-HEIGHT // 4), -(-WIDTH // 4)
  outputs = {
      common.CLASS_LOGITS: rng.normal(size=(batch, NUM_PRED, NUM_CLASSES + 1)),
      common.MASK_LOGITS: rng.normal(size=(batch, h, w, NUM_PRED)),
  }
  if with_optional:
    embeddings = rng.normal(size=(batch, h, w, DIM))
    outputs[common.PIXEL_EMBEDDINGS] = embeddings / np.linalg.norm(
        embeddings, axis=-1, keepdims=True)
    outputs[common.SEMANTIC_LOGITS] = rng.normal(size=(batch, h, w, NUM_CLASSES))
    outputs[common.REFERENCE_MASK_PARAMETERS] = rng.normal(size=(batch, NUM_PRED, 5))
  return {k: tf.constant(v, tf.float32) for k, v in outputs.items()}


def _total_of_terms(losses):
  return sum(v for k, v in losses.items() if k != panoptic_loss.TOTAL)


def test_total_is_sum_of_terms_and_weights_scale_terms():
  targets, outputs = make_targets(2), make_outputs(2)
  base = panoptic_loss.PanopticLoss(NUM_CLASSES)(targets, outputs)
  assert set(base) == {panoptic_loss.PQ_STYLE_CLASS, panoptic_loss.PQ_STYLE_MASK,
                       panoptic_loss.MASK_ID, panoptic_loss.INSTANCE_DISCRIMINATION,
                       panoptic_loss.SEMANTIC, panoptic_loss.MASK_APPROXIMATION,
                       panoptic_loss.TOTAL}
  np.testing.assert_allclose(base[panoptic_loss.TOTAL], _total_of_terms(base), rtol=1e-6)
  doubled = panoptic_loss.PanopticLoss(
      NUM_CLASSES, pq_style_weight=6.0, mask_id_weight=0.6, semantic_weight=2.0,
      mask_approximation_weight=2.0)(targets, outputs)
  for name in [panoptic_loss.PQ_STYLE_CLASS, panoptic_loss.PQ_STYLE_MASK,
               panoptic_loss.MASK_ID, panoptic_loss.SEMANTIC,
               panoptic_loss.MASK_APPROXIMATION]:
    np.testing.assert_allclose(doubled[name], 2 * base[name], rtol=1e-5)


def test_terms_are_batch_means_of_component_losses():
  targets, outputs = make_targets(3), make_outputs(3, with_optional=False)
  losses = panoptic_loss.PanopticLoss(NUM_CLASSES)(targets, outputs)
  prepared = loss_targets.prepare_loss_targets(targets, NUM_CLASSES)
  mask_probs = tf.nn.softmax(loss_targets.flatten_pixels(outputs[common.MASK_LOGITS]))
  class_prob, dice = matching_lib.pq_style_similarity(
      tf.nn.softmax(outputs[common.CLASS_LOGITS]),
      mask_probs * prepared.pixel_valid[..., None], prepared.gt_masks,
      prepared.gt_class_one_hot)
  matching = matching_lib.hungarian_match(class_prob * dice, prepared.gt_valid)
  class_term, mask_term = pq_style.pq_style_loss(
      outputs[common.CLASS_LOGITS], outputs[common.MASK_LOGITS], prepared, matching)
  np.testing.assert_allclose(losses[panoptic_loss.PQ_STYLE_CLASS],
                             3.0 * np.mean(class_term), rtol=1e-5)
  np.testing.assert_allclose(losses[panoptic_loss.PQ_STYLE_MASK],
                             3.0 * np.mean(mask_term), rtol=1e-5)
  # Without the optional outputs only the mandatory terms are present.
  assert panoptic_loss.SEMANTIC not in losses
  assert panoptic_loss.MASK_APPROXIMATION not in losses


def test_deep_supervision_and_rfn_reuse_the_final_matching():
  targets = make_targets(2)
  final, aux, first = make_outputs(2, 0), make_outputs(2, 1), make_outputs(2, 2)
  outputs = dict(final)
  outputs[common.AUX_OUTPUTS] = [final, aux]
  outputs[common.FIRST_NETWORK_OUTPUTS] = first
  losses = panoptic_loss.PanopticLoss(NUM_CLASSES, aux_weight=0.5,
                                      first_network_weight=2.0)(targets, outputs)
  alone = panoptic_loss.PanopticLoss(NUM_CLASSES)(targets, final)
  # Aux layer 0 equals the final layer, so its terms are reproduced exactly.
  prepared = loss_targets.prepare_loss_targets(targets, NUM_CLASSES)
  matching = panoptic_loss.PanopticLoss._match(final, prepared)
  aux_class, _ = pq_style.pq_style_loss(aux[common.CLASS_LOGITS],
                                        aux[common.MASK_LOGITS], prepared, matching)
  np.testing.assert_allclose(
      losses[panoptic_loss.AUX_PREFIX + panoptic_loss.PQ_STYLE_CLASS],
      0.5 * (alone[panoptic_loss.PQ_STYLE_CLASS] + 3.0 * np.mean(aux_class)), rtol=1e-5)
  first_class, _ = pq_style.pq_style_loss(first[common.CLASS_LOGITS],
                                          first[common.MASK_LOGITS], prepared, matching)
  np.testing.assert_allclose(
      losses[panoptic_loss.FIRST_NETWORK_PREFIX + panoptic_loss.PQ_STYLE_CLASS],
      2.0 * 3.0 * np.mean(first_class), rtol=1e-5)
  # The first network's own matching differs, so reuse is really being tested.
  own = panoptic_loss.PanopticLoss._match(first, prepared)
  assert not np.array_equal(own.gt_to_pred.numpy(), matching.gt_to_pred.numpy())
  np.testing.assert_allclose(losses[panoptic_loss.TOTAL], _total_of_terms(losses),
                             rtol=1e-6)


def test_gradients_reach_every_output():
  targets = make_targets(2)
  variables = {k: tf.Variable(v) for k, v in make_outputs(2).items()}
  with tf.GradientTape() as tape:
    loss = panoptic_loss.PanopticLoss(NUM_CLASSES)(targets, dict(variables))
  grads = tape.gradient(loss[panoptic_loss.TOTAL], variables)
  for name, grad in grads.items():
    assert grad is not None and np.all(np.isfinite(grad.numpy())), name
    assert np.abs(grad.numpy()).sum() > 0, name


def test_compiles_with_xla_and_agrees_with_eager():
  targets, outputs = make_targets(2), make_outputs(2)
  loss = panoptic_loss.PanopticLoss(NUM_CLASSES)
  # Instance discrimination uses every pixel here (20 < 4096), so no randomness.
  eager = loss(targets, outputs)
  compiled = tf.function(loss, jit_compile=True)(targets, outputs)
  for name in eager:
    np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-4, err_msg=name)


def test_explicit_global_batch_size():
  targets, outputs = make_targets(2), make_outputs(2)
  local = panoptic_loss.PanopticLoss(NUM_CLASSES)(targets, outputs)
  global_ = panoptic_loss.PanopticLoss(NUM_CLASSES, global_batch_size=8)(targets,
                                                                        outputs)
  np.testing.assert_allclose(global_[panoptic_loss.TOTAL],
                             local[panoptic_loss.TOTAL] * 2 / 8, rtol=1e-6)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='mask_id_weight'):
    panoptic_loss.PanopticLoss(NUM_CLASSES, mask_id_weight=-1.0)
  with pytest.raises(ValueError, match='CLASS_LOGITS'):
    panoptic_loss.PanopticLoss(NUM_CLASSES + 1)(make_targets(1), make_outputs(1))
  outputs = make_outputs(1)
  outputs[common.MASK_LOGITS] = tf.zeros([1, 4, 4, NUM_PRED])
  with pytest.raises(ValueError, match='MASK_LOGITS'):
    panoptic_loss.PanopticLoss(NUM_CLASSES)(make_targets(1), outputs)


_MIRRORED_SCRIPT = textwrap.dedent('''
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.losses import test_panoptic_loss as t
    from cmt_deeplab_tf.losses import panoptic_loss
    targets, outputs = t.make_targets(4), t.make_outputs(4, with_optional=False)
    single = panoptic_loss.PanopticLoss(t.NUM_CLASSES)(targets, outputs)
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    assert strategy.num_replicas_in_sync == 2
    def shard(ctx, tensors):
      i = ctx.replica_id_in_sync_group
      return {k: v[2 * i:2 * i + 2] for k, v in tensors.items()}
    per_targets = strategy.experimental_distribute_values_from_function(
        lambda ctx: shard(ctx, targets))
    per_outputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: shard(ctx, outputs))
    loss = panoptic_loss.PanopticLoss(t.NUM_CLASSES)
    per_replica = strategy.run(tf.function(loss), args=(per_targets, per_outputs))
    summed = strategy.reduce(tf.distribute.ReduceOp.SUM,
                             per_replica[panoptic_loss.TOTAL], axis=None)
    np.testing.assert_allclose(summed.numpy(), single[panoptic_loss.TOTAL].numpy(),
                               rtol=1e-5)
    print('MIRRORED_OK')
''')


def test_mirrored_strategy_sum_of_replica_losses_is_global_mean():
  repo_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=repo_root)
  result = subprocess.run([sys.executable, '-c', _MIRRORED_SCRIPT], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=300)
  assert 'MIRRORED_OK' in result.stdout, result.stderr[-3000:]



@pytest.mark.parametrize('traced', [False, True])
def test_recompute_gives_the_same_losses_and_gradients(traced):
  targets = make_targets(2)
  outputs = make_outputs(2)
  aux = [make_outputs(2, seed=seed) for seed in (1, 2)]
  outputs[common.AUX_OUTPUTS] = [  # What a layer's deep supervision reads.
      {k: a[k] for k in (common.CLASS_LOGITS, common.MASK_LOGITS,
                         common.REFERENCE_MASK_PARAMETERS)} for a in aux]
  leaves = tf.nest.flatten(outputs)

  def losses_and_gradients(recompute):
    loss_fn = panoptic_loss.PanopticLoss(NUM_CLASSES, recompute=recompute)

    def run(*tensors):
      with tf.GradientTape() as tape:
        tape.watch(tensors)
        losses = loss_fn(targets, tf.nest.pack_sequence_as(outputs, list(tensors)))
      return losses, tape.gradient(losses[panoptic_loss.TOTAL], tensors)
    return (tf.function(run) if traced else run)(*leaves)

  stored, recomputed = losses_and_gradients(False), losses_and_gradients(True)
  for name in stored[0]:
    np.testing.assert_allclose(recomputed[0][name], stored[0][name], rtol=1e-6, err_msg=name)
  for index, (a, b) in enumerate(zip(stored[1], recomputed[1])):
    assert np.any(a.numpy()), index  # Every output gets a gradient.
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=str(index))
