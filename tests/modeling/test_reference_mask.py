"""Tests of the Gaussian reference masks and coordinate features."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.modeling.layers import reference_mask


def test_normalized_coordinates_span_minus_one_to_one():
  grid = reference_mask.normalized_coordinates(3, 5).numpy()
  np.testing.assert_allclose(grid[:, 0, 0], [-1.0, 0.0, 1.0])
  np.testing.assert_allclose(grid[0, :, 1], [-1.0, -0.5, 0.0, 0.5, 1.0])
  np.testing.assert_allclose(reference_mask.normalized_coordinates(1, 1), 0.0)


def test_coordinate_features_give_y_and_x_per_image():
  pixels = tf.ones([2, 3, 5, 4])
  features = reference_mask.coordinate_features(pixels).numpy()
  assert features.shape == (2, 3, 5, 2)
  np.testing.assert_allclose(features[1, 2, 4], [1.0, 1.0])
  np.testing.assert_allclose(features[0, 1, 0], [0.0, -1.0])
  np.testing.assert_array_equal(features[0], features[1])


def test_gaussian_logits_by_hand():
  # Center (cy, cx) = (0.5, -0.5) via tanh, sigma = (0.5, 1), level 2.
  parameters = np.array([[[np.arctanh(0.5), np.arctanh(-0.5),
                           np.log(0.5), 0.0, 2.0]]], np.float32)
  logits = reference_mask.gaussian_mask_logits(tf.constant(parameters), 3,
                                               5).numpy()
  assert logits.shape == (1, 3, 5, 1)
  # Pixel (row 2, col 0) sits at (y, x) = (1, -1): d^2 = (0.5/0.5)^2 + 0.5^2.
  np.testing.assert_allclose(logits[0, 2, 0, 0], 2.0 - 0.5 * (1.0 + 0.25),
                             rtol=1e-5)
  # The peak is nearest the predicted center.
  assert np.unravel_index(logits[0, ..., 0].argmax(), (3, 5)) in ((1, 1),
                                                                  (2, 1))


def test_initial_reference_masks_cover_the_image():
  layer = reference_mask.GaussianReferenceMask()
  parameters = layer(tf.random.normal([2, 4, 8]))
  logits = reference_mask.gaussian_mask_logits(parameters, 9, 9)
  # sigma ~ 1 in the [-1, 1] frame: even the corners keep sigmoid > 0.15.
  assert tf.reduce_min(tf.sigmoid(logits)) > 0.15
  prior = reference_mask.log_reference_prior(logits)
  assert tf.reduce_max(prior) <= 0.0


def test_extreme_parameters_stay_finite():
  parameters = tf.constant([[[50.0, -50.0, -1e4, 1e4, 3.0]]])
  logits = reference_mask.gaussian_mask_logits(parameters, 5, 5)
  assert np.all(np.isfinite(logits.numpy()))


def test_gaussian_logits_match_the_unseparated_formula():
  """The separable evaluation equals a - ((y-cy)^2/sy^2 + (x-cx)^2/sx^2) / 2
  computed on the full grid, for random parameters and odd sizes."""
  rng = np.random.default_rng(0)
  parameters = rng.standard_normal([2, 6, 5]).astype(np.float32)
  parameters[..., 2:4] *= 2.0
  for height, width in ((7, 11), (1, 4), (13, 1)):
    logits = reference_mask.gaussian_mask_logits(
        tf.constant(parameters), height, width).numpy()
    grid = reference_mask.normalized_coordinates(height, width).numpy()
    center = np.tanh(parameters[..., 0:2])
    sigma = np.exp(np.clip(parameters[..., 2:4], -6.0, 3.0))
    offset = (grid[None, :, :, None, :] - center[:, None, None]) / sigma[
        :, None, None]
    expected = parameters[:, None, None, :, 4] - 0.5 * np.sum(offset**2, -1)
    assert logits.shape == (2, height, width, 6)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
