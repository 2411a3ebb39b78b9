"""Tests of the seeded random draws of a training step."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.modeling import random_draws
from cmt_deeplab_tf.modeling.layers import drop_path

SEED = tf.constant([7, 3], tf.int64)


def test_the_nth_draw_is_stateless_uniform_of_the_seed_folded_with_n():
  with random_draws.seeded(SEED):
    draws = [random_draws.uniform([5], 2.0, 4.0) for _ in range(3)]
  for n, draw in enumerate(draws):
    expected = tf.random.stateless_uniform(
        [5], tf.random.experimental.stateless_fold_in(SEED, n), 2.0, 4.0)
    np.testing.assert_array_equal(draw, expected)
  assert not np.array_equal(draws[0], draws[1])


def test_a_traced_step_draws_the_same_numbers_whenever_it_runs():
  """As a resumed run's step: the draws depend on the step's seed only."""
  @tf.function
  def step(seed):
    with random_draws.seeded(seed):
      return random_draws.uniform([4]), random_draws.uniform([4])

  first = step(SEED)
  tf.random.uniform([100])  # Other random ops in between change nothing.
  np.testing.assert_array_equal(step(SEED)[0], first[0])
  np.testing.assert_array_equal(step(SEED)[1], first[1])
  assert not np.array_equal(step(SEED + [0, 1])[0], first[0])


def test_outside_a_step_draws_are_tensorflows_global_random_numbers():
  tf.random.set_seed(5)
  expected = tf.random.uniform([4])
  tf.random.set_seed(5)
  np.testing.assert_array_equal(random_draws.uniform([4]), expected)


def test_drop_path_masks_repeat_with_the_seed_and_change_with_it():
  layer = drop_path.DropPath(0.5)
  x = tf.ones([64, 2])

  def masks(seed):
    with random_draws.seeded(tf.constant(seed, tf.int64)):
      return layer(x, training=True).numpy()[:, 0]

  a = masks([1, 0])
  np.testing.assert_array_equal(masks([1, 0]), a)
  assert set(np.unique(a)) == {0.0, 2.0}
  assert not np.array_equal(masks([1, 1]), a)
