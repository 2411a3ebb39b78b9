"""Tests of the Recursive Feature Network (supplement §1)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import rfn
from tests.modeling import cmt_test_utils


@pytest.fixture(scope='module')
def model():
  tf_keras.utils.set_random_seed(0)
  network = rfn.RecursiveFeatureNetwork(
      cmt_test_utils.tiny_network(),
      cmt_test_utils.tiny_network(learn_initial_centers=False))
  network(tf.zeros([1, 33, 33, 3]))
  # Moderate gammas: two stacked networks with all gammas at 1 overflow.
  cmt_test_utils.activate_residual_branches(network, gamma=0.3)
  return network


def _images():
  return tf.random.stateless_uniform([2, 33, 41, 3], [0, 1], -1.0, 1.0)


def test_one_shared_set_of_centers(model):
  centers = [v for v in model.trainable_variables
             if 'initial_centers' in v.name]
  assert len(centers) == 1
  assert model.first_network.transformer.has_initial_centers
  assert not model.second_network.transformer.has_initial_centers


def test_second_network_continues_from_first_networks_centers_and_features(
    model):
  images = _images()
  outputs = model(images, training=False)
  first_outputs, centers, features = model.first_network.forward(
      images, training=False)
  initial = model.first_network.transformer.initial_centers(2)
  # The first network updated the centers ...
  assert np.abs(centers - initial).max() > 1e-3
  # ... and the second network starts from them, on fused stride-4 features.
  expected, _, _ = model.second_network.forward(
      images, training=False, centers=centers, res2_fusion=features)
  np.testing.assert_allclose(outputs[common.MASK_LOGITS],
                             expected[common.MASK_LOGITS], atol=1e-5)
  assert np.all(np.isfinite(outputs[common.MASK_LOGITS]))
  unfused, _, _ = model.second_network.forward(images, training=False,
                                               centers=centers)
  assert np.abs(unfused[common.MASK_LOGITS] -
                expected[common.MASK_LOGITS]).max() > 1e-4
  np.testing.assert_allclose(
      outputs[common.FIRST_NETWORK_OUTPUTS][common.CLASS_LOGITS],
      first_outputs[common.CLASS_LOGITS], atol=1e-5)


def test_first_network_outputs_are_exposed_for_supervision(model):
  outputs = model(_images(), training=True)
  first = outputs[common.FIRST_NETWORK_OUTPUTS]
  for key in (common.CLASS_LOGITS, common.MASK_LOGITS, common.AUX_OUTPUTS,
              common.REFERENCE_MASK_PARAMETERS, common.SEMANTIC_LOGITS):
    assert key in first
  assert first[common.MASK_LOGITS].shape == outputs[common.MASK_LOGITS].shape


def test_final_loss_reaches_both_networks(model):
  with tf.GradientTape() as tape:
    outputs = model(_images(), training=True)
    outputs.pop(common.FIRST_NETWORK_OUTPUTS)
    loss = cmt_test_utils.sum_of_outputs(outputs)
  gradients = tape.gradient(loss, model.trainable_variables)
  by_name = {v.name: g for v, g in zip(model.trainable_variables, gradients)}
  centers_gradient = [g for n, g in by_name.items() if 'initial_centers' in n]
  assert np.abs(centers_gradient[0]).max() > 0.0
  first_decoder = model.first_network.pixel_decoder.trainable_variables
  assert any(by_name[v.name] is not None for v in first_decoder)


def test_networks_must_share_one_center_set():
  with pytest.raises(ValueError):
    rfn.RecursiveFeatureNetwork(cmt_test_utils.tiny_network(),
                                cmt_test_utils.tiny_network())
