"""Tests of the CMT-DeepLab model on a tiny configuration."""
import os
import re
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import max_deeplab
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from tests.modeling import cmt_test_utils

NUM_CLASSES = 3
NUM_CLUSTERS = 4


@pytest.fixture(scope='module')
def model():
  tf_keras.utils.set_random_seed(0)
  network = cmt_test_utils.tiny_network(NUM_CLASSES, NUM_CLUSTERS)
  network(tf.zeros([1, 33, 33, 3]), training=True)  # Builds every head.
  cmt_test_utils.activate_residual_branches(network)
  return network


def _images(height, width, batch=2, seed=0):
  return tf.random.stateless_uniform([batch, height, width, 3], [seed, 1],
                                     -1.0, 1.0)


@pytest.mark.parametrize('height,width', [(65, 97), (50, 31)])
def test_output_shapes_at_odd_sizes(model, height, width):
  outputs = model(_images(height, width), training=True)
  h, w = -(-height // 4), -(-width // 4)
  assert outputs[common.CLASS_LOGITS].shape == (2, NUM_CLUSTERS,
                                                NUM_CLASSES + 1)
  assert outputs[common.MASK_LOGITS].shape == (2, h, w, NUM_CLUSTERS)
  assert outputs[common.REFERENCE_MASK_PARAMETERS].shape == (2, NUM_CLUSTERS, 5)
  assert outputs[common.SEMANTIC_LOGITS].shape == (2, h, w, NUM_CLASSES)
  embeddings = outputs[common.PIXEL_EMBEDDINGS].numpy()
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0,
                             rtol=1e-4)
  # One CMT layer per decoder block (3); all but the last are deep-supervised.
  assert len(outputs[common.AUX_OUTPUTS]) == 2
  for aux in outputs[common.AUX_OUTPUTS]:
    assert aux[common.MASK_LOGITS].shape == (2, h, w, NUM_CLUSTERS)
    assert aux[common.REFERENCE_MASK_PARAMETERS].shape == (2, NUM_CLUSTERS, 5)
    assert aux[common.CLASS_LOGITS].shape == (2, NUM_CLUSTERS,
                                              NUM_CLASSES + 1)


def test_semantic_head_and_deep_supervision_run_only_in_training(model):
  outputs = model(_images(33, 33), training=False)
  assert common.SEMANTIC_LOGITS not in outputs
  assert common.REFERENCE_MASK_PARAMETERS not in outputs
  assert common.AUX_OUTPUTS not in outputs
  assert common.CLUSTERING_MAPS not in outputs


def test_visualization_adds_maps_without_changing_outputs(model):
  images = _images(49, 41)
  plain = model(images, training=False)
  with_maps = model(images, training=False, return_visualization=True)
  np.testing.assert_allclose(with_maps[common.MASK_LOGITS],
                             plain[common.MASK_LOGITS], atol=1e-5)
  strides = (16, 8, 4)
  for key, normalized_axis in ((common.CLUSTERING_MAPS, -1),
                               (common.ATTENTION_MAPS, (1, 2))):
    maps = with_maps[key]
    assert [m.shape[1:3] for m in maps] == [
        (-(-49 // s), -(-41 // s)) for s in strides]
    if key == common.CLUSTERING_MAPS:
      # Clustering: every pixel distributes a unit mass over the clusters.
      for m in maps:
        np.testing.assert_allclose(tf.reduce_sum(m, normalized_axis), 1.0,
                                   rtol=1e-4)
    else:
      # Cross-attention shares its softmax with center self-attention, so a
      # center's mass over the pixels is in (0, 1) (1 up to float32 rounding
      # for a center that attends to pixels only).
      for m in maps:
        mass = tf.reduce_sum(m, normalized_axis).numpy()
        assert np.all(mass > 0.0) and np.all(mass <= 1.0 + 1e-6)
        assert mass.min() < 1.0 - 1e-3


def test_every_trainable_variable_gets_a_gradient(model):
  with tf.GradientTape() as tape:
    outputs = model(_images(33, 33), training=True)
    loss = cmt_test_utils.sum_of_outputs(outputs)
  gradients = tape.gradient(loss, model.trainable_variables)
  missing = [v.name for v, g in zip(model.trainable_variables, gradients)
             if g is None]
  assert not missing
  zero = [v.name for v, g in zip(model.trainable_variables, gradients)
          if not np.any(tf.convert_to_tensor(g).numpy())]
  # A logit norm's offset shifts its logits by a constant per head; where the
  # logits only reach softmaxes (directly, or as the next layer's residual)
  # the shift cancels and its exact gradient is zero (the fused
  # implementation gives exactly zero, the plain one float32 rounding).
  softmax_shift = re.compile(r'/logit_batch_norm/beta:0$')
  assert not [name for name in zero if not softmax_shift.search(name)]


def test_checkpoint_round_trip(model):
  source = model
  images = _images(33, 33)
  expected = source(images, training=False)[common.MASK_LOGITS]
  target = cmt_test_utils.tiny_network(NUM_CLASSES, NUM_CLUSTERS)
  target(images, training=True)  # Builds the training-only head too.
  with tempfile.TemporaryDirectory() as directory:
    path = tf.train.Checkpoint(model=source).save(
        os.path.join(directory, 'ckpt'))
    tf.train.Checkpoint(model=target).restore(path).assert_consumed()
  np.testing.assert_allclose(
      target(images, training=False)[common.MASK_LOGITS], expected, atol=1e-5)


@pytest.mark.slow
def test_xla_matches_eager(model):
  images = _images(33, 49)
  compiled = tf.function(lambda x: model(x, training=False),
                         jit_compile=True)
  eager = model(images, training=False)
  xla = compiled(images)
  for key in (common.MASK_LOGITS, common.CLASS_LOGITS):
    # XLA reorders float32 reductions: compare relative to the output scale.
    scale = np.abs(eager[key].numpy()).max()
    np.testing.assert_allclose(xla[key], eager[key], atol=1e-3 * scale)


def test_mixed_bfloat16_outputs_float32():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    network = cmt_test_utils.tiny_network(NUM_CLASSES, NUM_CLUSTERS)
    outputs = network(_images(33, 33), training=True)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  for key in (common.CLASS_LOGITS, common.MASK_LOGITS,
              common.PIXEL_EMBEDDINGS, common.REFERENCE_MASK_PARAMETERS,
              common.SEMANTIC_LOGITS):
    assert outputs[key].dtype == tf.float32
    assert np.all(np.isfinite(outputs[key].numpy()))


def _forward_by_hand(model, images, fusion):
  """The reference of `CMTDeepLab.forward`: every block called by hand, the
  transformer layer at each location after its block (on the unactivated
  output, which the next block reads activated), the RFN fusion averaged into
  the last stride-4 block's output; returns the final centers and the stride-4
  decoder features."""
  backbone, decoder = model.backbone, model.pixel_decoder
  centers = model.transformer.initial_centers(images.shape[0])
  assignment = None

  def after(path, stage, block, pixels):
    nonlocal centers, assignment
    location = f'{path}_stage{stage}_block{block}'
    if location in model.transformer.transformer_layers:
      outputs = model.transformer.transformer_layers[location](
          pixels, centers, assignment, training=False)
      pixels, centers = outputs['pixels'], outputs['centers']
      assignment = outputs.get('assignment_logits', assignment)
    return pixels

  x = backbone.stem(images, training=False)
  endpoints = {}
  for stage_index, blocks in enumerate(backbone.stages):
    for block_index, block in enumerate(blocks):
      preactivation = after('backbone', stage_index, block_index,
                            block(x, training=False, activate_output=False))
      x = tf.nn.relu(preactivation)
    if stage_index == 0:
      preactivation = 0.5 * (preactivation + fusion)
      x = tf.nn.relu(preactivation)
    endpoints[axial_resnet.PREACTIVATIONS[stage_index]] = preactivation
    endpoints[axial_resnet.ENDPOINTS[stage_index]] = x
  x, preactivation = endpoints['res5'], endpoints['stage5']
  for stage_index, blocks in enumerate(decoder.stages):
    if stage_index:
      skip = [(endpoints['res3'], endpoints['stage3']),
              (endpoints['res2'], endpoints['stage2'])][stage_index - 1]
      x = tf.nn.relu(decoder.fuses[stage_index](
          [(x, preactivation), skip], training=False))
    for block_index, block in enumerate(blocks):
      preactivation = after('decoder', stage_index, block_index,
                            block(x, training=False, activate_output=False))
      x = tf.nn.relu(preactivation)
  return centers, x


@pytest.fixture(scope='module')
def max_model():
  """A tiny MaX-DeepLab-S: dual-path layers after the stage-5 blocks."""
  tf_keras.utils.set_random_seed(1)
  network = max_deeplab.build_max_deeplab(
      cmt_test_utils.tiny_backbone(stage5_blocks=3), NUM_CLASSES, NUM_CLUSTERS,
      width_multiplier=cmt_test_utils.TINY_WIDTH)
  network(tf.zeros([1, 33, 33, 3]), training=True)
  cmt_test_utils.activate_residual_branches(network)
  return network


@pytest.mark.parametrize('network', ['model', 'max_model'])
def test_forward_is_the_blocks_and_layers_in_order_with_the_fusion(network,
                                                                    request):
  """Against the blocks and layers called by hand: each transformer layer runs
  after its block (in the decoder, and in MaX-S's stage 5), the RFN fusion
  averages into the last stride-4 block's output, and the later stages read
  the fused features."""
  model = request.getfixturevalue(network)
  images = _images(33, 33)
  fusion = tf.random.stateless_normal([2, 9, 9, 32], [3, 4])
  expected_centers, expected_features = _forward_by_hand(model, images, fusion)
  _, centers, features = model.forward(images, training=False,
                                       res2_fusion=fusion)
  np.testing.assert_allclose(centers, expected_centers, atol=1e-5)
  np.testing.assert_allclose(features, expected_features, atol=1e-5)
  _, _, unfused = model.forward(images, training=False)
  assert np.abs(unfused - features).max() > 1e-3
