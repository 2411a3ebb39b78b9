"""The batched shortest-augmenting-path solver against scipy."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from cmt_deeplab_tf.losses import hungarian


def _check(cost, row_active, col4row):
  for b in range(cost.shape[0]):
    rows = np.flatnonzero(row_active[b])
    assert np.all(col4row[b][~row_active[b]] == -1)
    cols = col4row[b][rows]
    assert len(set(cols)) == len(cols) and np.all(cols >= 0)
    r, c = linear_sum_assignment(cost[b][rows])
    np.testing.assert_allclose(cost[b][rows, cols].sum(), cost[b][rows][r, c].sum(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('num_rows,num_cols,tie_levels', [
    (5, 5, 0), (4, 9, 0), (12, 12, 0), (10, 13, 3), (16, 16, 2), (1, 1, 0)])
def test_matches_scipy(num_rows, num_cols, tie_levels):
  rng = np.random.default_rng(num_rows * 31 + num_cols + tie_levels)
  cost = rng.normal(size=(64, num_rows, num_cols))
  if tie_levels:
    cost = rng.integers(0, tie_levels, cost.shape).astype(np.float64)
  cost = cost.astype(np.float32)
  row_active = rng.random((64, num_rows)) < 0.75
  col4row = hungarian.min_cost_matching(tf.constant(cost),
                                                    tf.constant(row_active))
  _check(cost, row_active, col4row.numpy())


def test_hand_made():
  # The greedy choice (row 0 -> col 0) is wrong: optimum is 0->1, 1->0 (cost 3).
  cost = np.array([[[1.0, 2.0], [1.0, 5.0]]], np.float32)
  col4row = hungarian.min_cost_matching(tf.constant(cost),
                                                    tf.ones([1, 2], tf.bool))
  np.testing.assert_array_equal(col4row.numpy(), [[1, 0]])


def test_compiles_with_xla():
  rng = np.random.default_rng(5)
  cost = rng.random((8, 20, 24)).astype(np.float32)
  row_active = np.ones((8, 20), bool)
  solve = tf.function(hungarian.min_cost_matching, jit_compile=True)
  _check(cost, row_active, solve(tf.constant(cost), tf.constant(row_active)).numpy())


def test_rejects_more_rows_than_columns():
  with pytest.raises(ValueError, match='n <= m'):
    hungarian.min_cost_matching(tf.zeros([1, 3, 2]), tf.ones([1, 3], tf.bool))


def test_every_row_prefers_the_same_column():
  # Row reduction can match only one row; the others need augmenting paths.
  rng = np.random.default_rng(9)
  cost = (np.arange(7)[None, None, :] + 0.1 * rng.random((16, 5, 7))).astype(np.float32)
  row_active = np.ones((16, 5), bool)
  col4row = hungarian.min_cost_matching(tf.constant(cost),
                                                    tf.constant(row_active))
  _check(cost, row_active, col4row.numpy())


@pytest.mark.parametrize('num_rows,num_cols,tie_levels', [(70, 130, 0), (40, 70, 3),
                                                          (128, 128, 0)])
def test_path_bit_sets_span_several_words(num_rows, num_cols, tie_levels):
  # More than 64 columns: the search-tree paths are bit sets of several int64 words.
  rng = np.random.default_rng(num_rows + num_cols)
  cost = rng.normal(size=(8, num_rows, num_cols))
  if tie_levels:
    cost = rng.integers(0, tie_levels, cost.shape).astype(np.float64)
  cost = cost.astype(np.float32)
  row_active = rng.random((8, num_rows)) < 0.9
  solve = tf.function(hungarian.min_cost_matching, jit_compile=True)
  _check(cost, row_active, solve(tf.constant(cost), tf.constant(row_active)).numpy())


def test_problems_of_one_batch_need_different_numbers_of_steps():
  # Each problem runs its own searches: some finish at once, others need long
  # augmenting paths, one has no active row at all.
  rng = np.random.default_rng(12)
  cost = rng.random((6, 20, 24)).astype(np.float32)
  cost[1::2] = np.arange(24)[None, None, :] + 0.01 * cost[1::2]
  row_active = np.ones((6, 20), bool)
  row_active[4] = False
  col4row = hungarian.min_cost_matching(tf.constant(cost),
                                                    tf.constant(row_active))
  _check(cost, row_active, col4row.numpy())


@pytest.mark.parametrize('jit_compile', [False, True])
def test_unknown_batch_size(jit_compile):
  # Without a static batch the cost rows are gathered instead of sliced.
  rng = np.random.default_rng(8)
  cost = rng.random((5, 9, 11)).astype(np.float32)
  row_active = rng.random((5, 9)) < 0.8
  solve = tf.function(hungarian.min_cost_matching, jit_compile=jit_compile,
                      input_signature=[tf.TensorSpec([None, 9, 11], tf.float32),
                                       tf.TensorSpec([None, 9], tf.bool)])
  _check(cost, row_active, solve(tf.constant(cost), tf.constant(row_active)).numpy())


@pytest.mark.parametrize('batch_spec', [8, None])
@pytest.mark.parametrize('kind', ['normal', 'ties', 'same_column'])
def test_auction_warm_start_stays_exact(kind, batch_spec):
  # 128x128 problems leave dozens of rows free after the row reduction, so the
  # auction runs its rounds, with more free rows than bidders ('same_column':
  # nearly all rows prefer column 0) and with tied bids ('ties').
  rng = np.random.default_rng(len(kind))
  solve = tf.function(hungarian.min_cost_matching, jit_compile=True,
                      input_signature=[tf.TensorSpec([batch_spec, 128, 128], tf.float32),
                                       tf.TensorSpec([batch_spec, 128], tf.bool)])
  for _ in range(3):
    cost = rng.normal(size=(8, 128, 128))
    if kind == 'ties':
      cost = rng.integers(0, 6, cost.shape).astype(np.float64)
    elif kind == 'same_column':
      cost = np.arange(128)[None, None, :] + 0.5 * rng.random(cost.shape)
    cost = cost.astype(np.float32)
    row_active = rng.random((8, 128)) < 0.9
    _check(cost, row_active, solve(tf.constant(cost), tf.constant(row_active)).numpy())


def test_first_position_inverts_a_matching_and_keeps_the_first_duplicate():
  rng = np.random.default_rng(3)
  index = rng.integers(-1, 6, (32, 9)).astype(np.int32)
  got = hungarian.first_position(tf.constant(index), 6).numpy()
  for b in range(32):
    for j in range(6):
      hits = np.flatnonzero(index[b] == j)
      assert got[b, j] == (hits[0] if len(hits) else -1)


def test_packed_keys_sort_by_value_then_tie_key():
  # The Dijkstra step and the row reduction find (min value, its tie key) with one
  # int64 reduction; the packing must order pairs exactly as a lexicographic sort.
  rng = np.random.default_rng(4)
  values = rng.choice([-3.5, -1e-7, 0.0, 1e-7, 2.0, 1e30, 7.25], size=(16, 64))
  values = (values * rng.choice([1.0, 1.5], size=values.shape)).astype(np.float32)
  tie = rng.integers(0, 256, values.shape)
  keys = hungarian._pack(tf.constant(values), tf.constant(tie, tf.int64), 9)
  lowest, tie_of_lowest = hungarian._unpack(tf.reduce_min(keys, -1), 9)
  for b in range(16):
    first = np.lexsort((tie[b], values[b]))[0]
    assert lowest.numpy()[b] == values[b, first]
    assert tie_of_lowest.numpy()[b] == tie[b, first]
