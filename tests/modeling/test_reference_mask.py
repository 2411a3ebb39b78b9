"""Tests of the Gaussian reference masks and coordinate features."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling.layers import fast_path
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
  prior = reference_mask.log_reference_prior(parameters, 9, 9)
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


def _float64_logits(parameters, height, width):
  """The reference-mask logits on the full grid in float64 NumPy."""
  grid = reference_mask.normalized_coordinates(height, width).numpy()
  center = np.tanh(parameters[..., 0:2].astype(np.float64))
  sigma = np.exp(np.clip(parameters[..., 2:4], -6.0, 3.0).astype(np.float64))
  offset = (grid[None, :, :, None, :] - center[:, None, None]) / sigma[
      :, None, None]
  level = np.clip(parameters[..., 4].astype(np.float64), -80.0, 80.0)
  return level[:, None, None, :] - 0.5 * np.sum(offset**2, -1)


@pytest.mark.parametrize('log_prior', [
    reference_mask.log_reference_prior,
    fast_path.separable_log_reference_prior])
def test_log_prior_is_log_sigmoid_of_the_logits_everywhere(log_prior):
  """The plain and the separable prior equal log(sigmoid(r)) (float64 NumPy,
  stable form) from r >> 0 (level 60, 80) to r << 0 (sigma e^-6: r down to about -2e5),
  where exp(-r) overflows float32 and e^r underflows."""
  parameters = np.array([[[0.3, -0.2, 0.0, 0.5, 2.0],     # moderate
                          [0.0, 0.0, 3.0, 3.0, 60.0],     # r >> 0
                          [0.9, -0.9, -6.0, -6.0, 0.0],   # tiny: r << 0
                          [-0.5, 0.5, -3.0, 1.0, -30.0],  # low level
                          [0.0, 0.0, 0.0, 0.0, 200.0]]],  # level clipped
                        np.float32)
  for height, width in ((9, 13), (1, 5)):
    prior = log_prior(tf.constant(parameters), height, width).numpy()
    r = _float64_logits(parameters, height, width)
    expected = np.minimum(r, 0.0) - np.log1p(np.exp(-np.abs(r)))
    assert prior.shape == (1, height, width, 5)
    # <= 0 up to the rounding of r - log1p(e^r) for large r.
    assert np.all(np.isfinite(prior)) and np.all(prior <= 5e-5)
    # Within a few float32 ulps of r (r itself is rounded to float32).
    assert np.all(np.abs(prior - expected) <= 1e-5 + 4e-7 * np.abs(r))
    assert r.min() < -1e4 and r.max() > 50.0  # Both extremes are exercised.


def test_level_is_clipped_to_plus_minus_80():
  parameters = tf.constant([[[0.0, 0.0, 0.0, 0.0, 500.0],
                             [0.0, 0.0, 0.0, 0.0, -500.0]]])
  logits = reference_mask.gaussian_mask_logits(parameters, 3, 3).numpy()
  np.testing.assert_allclose(logits[0, 1, 1], [80.0, -80.0])
