"""Pixel-wise instance discrimination against NumPy, and its pixel sampling."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.losses import instance_discrimination
from tests.losses import tiny_case


def _embeddings(seed):
  e = np.random.default_rng(seed).normal(size=(1, 2, 3, 5)).astype(np.float32)
  return e / np.linalg.norm(e, axis=-1, keepdims=True)


def _numpy_loss(embeddings, temperature):
  features = embeddings[0].reshape(6, -1)
  labels = tiny_case.FLAT_MASK_INDEX
  valid = np.flatnonzero(labels >= 0)
  losses = []
  for k in valid:
    logits = np.array([features[k] @ features[j] / temperature for j in valid])
    log_probs = logits - np.log(np.exp(logits).sum())
    same = labels[valid] == labels[k]
    losses.append(-(log_probs * same).sum() / same.sum())
  return np.mean(losses)


def test_all_pixels_matches_numpy():
  embeddings = _embeddings(4)
  loss = instance_discrimination.instance_discrimination_loss(
      tf.constant(embeddings), tiny_case.targets(), temperature=0.3, sample_k=0)
  np.testing.assert_allclose(loss.numpy(), [_numpy_loss(embeddings, 0.3)], rtol=1e-5)


def test_sampling_all_labelled_pixels_equals_full_loss():
  # Five labelled pixels of six: sampling five must pick exactly those.
  embeddings = _embeddings(5)
  loss = instance_discrimination.instance_discrimination_loss(
      tf.constant(embeddings), tiny_case.targets(), temperature=0.5, sample_k=5)
  np.testing.assert_allclose(loss.numpy(), [_numpy_loss(embeddings, 0.5)], rtol=1e-5)


def test_separated_instances_have_lower_loss():
  # Embeddings equal within a mask and orthogonal across masks.
  good = np.zeros((1, 2, 3, 5), np.float32)
  good[0, 0, :, 0] = 1.0
  good[0, 1, :, 1] = 1.0
  bad = np.zeros_like(good)
  bad[..., 0] = 1.0  # Every pixel the same: masks are indistinguishable.
  targets = tiny_case.targets()
  loss = lambda e: instance_discrimination.instance_discrimination_loss(
      tf.constant(e), targets, sample_k=0).numpy()[0]
  assert loss(good) < loss(bad)


def test_rejects_bad_temperature():
  with pytest.raises(ValueError, match='temperature'):
    instance_discrimination.instance_discrimination_loss(
        tf.constant(_embeddings(0)), tiny_case.targets(), temperature=0.0)
