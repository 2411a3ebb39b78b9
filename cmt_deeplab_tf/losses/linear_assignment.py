"""Batched, XLA-compilable exact linear assignment by shortest augmenting paths.

The algorithm is the one of scipy's `linear_sum_assignment` (Crouse, "On
implementing 2D rectangular assignment algorithms", IEEE TAES 2016, Alg. 1):
rows are inserted one at a time; each insertion runs a Dijkstra search over the
reduced costs `cost - u - v` for the cheapest path to a free column, updates the
dual variables (u, v) and flips the assignments along the path. A parallel row
reduction first assigns every row whose cheapest column is not claimed by an
earlier row, so only the conflicting rows need the sequential insertions. Every
step is a vectorised op on [B, m] tensors inside `tf.while_loop`s with static
shapes, so a whole batch of problems is solved in lockstep, on any device and
under XLA.

Speed: a Dijkstra step is a few microseconds of loop overhead around very little
work, so the loop bodies are kept to a handful of ops. Index searches use
`reduce_min` over an index ramp instead of `argmin`/`argmax`, whose (value,
index) reductions XLA's CPU backend does not vectorise, and a search step finds
its next column with one reduction over int64 keys that pack the path cost with
the tie-break; the rows a search expanded are recovered after it from the
columns it saw.
"""
import tensorflow as tf

_INFINITY = 1e30


def _ramp(size: int, axis: int, rank: int) -> tf.Tensor:
  """int32 0..size-1 along `axis`, shaped to broadcast against a rank-`rank` tensor."""
  shape = [1] * rank
  shape[axis] = size
  return tf.reshape(tf.range(size, dtype=tf.int32), shape)


def index_of_true(x: tf.Tensor, axis: int) -> tf.Tensor:
  """int32: index of the first True along `axis` of a bool tensor, -1 if none."""
  size = x.shape[axis]
  first = tf.reduce_min(tf.where(x, _ramp(size, axis, x.shape.rank), size), axis=axis)
  return tf.where(first < size, first, -1)


def first_position(index: tf.Tensor, size: int) -> tf.Tensor:
  """int32 [B, size]: for each value j, the first i with index[b, i] == j, else -1.

  Negative entries of `index` [B, n] are skipped. For a one-to-one assignment
  this is its inverse. A scatter over the n entries, not a [B, n, size] search.
  """
  num = index.shape[1]
  batch = index.shape[0] or tf.shape(index)[0]
  segment = index + size * tf.range(batch)[:, tf.newaxis]
  segment = tf.where(index >= 0, segment, batch * size)  # A dump segment, dropped.
  positions = tf.broadcast_to(tf.range(num), tf.shape(index))
  first = tf.math.unsorted_segment_min(positions, segment, batch * size + 1)
  first = tf.reshape(first[:-1], [batch, size])
  return tf.where(first < num, first, -1)  # Empty segments hold the int32 maximum.


def _flip_negative_bits(bits: tf.Tensor) -> tf.Tensor:
  """Maps float32 bit patterns to int32s in the floats' order, and back (an involution)."""
  return tf.bitwise.bitwise_xor(
      bits, tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 31), 0x7fffffff))


def _pack(values, tie_key, tie_bits):
  """int64 keys that sort as (float32 value, tie_key) pairs, for one reduce_min."""
  ordered = _flip_negative_bits(tf.bitcast(values, tf.int32))
  return tf.bitwise.left_shift(tf.cast(ordered, tf.int64), tie_bits) | tie_key


def _unpack(key, tie_bits):
  """The (float32 value, int32 tie key) of `_pack`."""
  ordered = tf.cast(tf.bitwise.right_shift(key, tie_bits), tf.int32)
  tie = tf.cast(key & ((1 << tie_bits) - 1), tf.int32)
  return tf.bitcast(_flip_negative_bits(ordered), tf.float32), tie


def _dijkstra_to_free_column(cost, u, v, row4col, cur_row, searching):
  """Searches, per problem, the shortest augmenting path from row cur_row [B].

  Columns are scanned in order of their path cost; ties go to a free column,
  then to the lowest index, as in scipy.

  Returns (sink [B], min_val [B], shortest [B, m], path [B, m], cols_seen
  [B, m]); problems with `searching` False are left untouched (sink -2).
  """
  num_cols = cost.shape[2]
  batch = tf.shape(cost)[0]
  cols = _ramp(num_cols, 1, 2)
  # Sort key of a column among equally short ones: free columns first.
  tie_key = tf.cast(cols + tf.where(row4col < 0, 0, num_cols), tf.int64)
  tie_bits = (2 * num_cols).bit_length()
  init = (
      cur_row,                                    # row being expanded
      tf.zeros([batch]),                          # min_val
      tf.where(searching, -1, -2),                # sink (-1 = still searching)
      tf.fill([batch, num_cols], _INFINITY),      # shortest path costs
      -tf.ones([batch, num_cols], tf.int32),      # path: previous row of a column
      tf.zeros([batch, num_cols], tf.bool),       # columns seen
  )

  def body(row, min_val, sink, shortest, path, cols_seen):
    active = sink == -1
    offset = tf.gather(u, row, batch_dims=1) - min_val
    reduced = tf.gather(cost, row, batch_dims=1) - v - offset[:, tf.newaxis]
    better = active[:, tf.newaxis] & ~cols_seen & (reduced < shortest)
    path = tf.where(better, row[:, tf.newaxis], path)
    shortest = tf.where(better, reduced, shortest)
    candidates = tf.where(cols_seen, _INFINITY, shortest)
    lowest, tie = _unpack(
        tf.reduce_min(_pack(candidates, tie_key, tie_bits), axis=-1), tie_bits)
    col = tie % num_cols
    found = tie < num_cols  # The column is free: the path ends there.
    sink = tf.where(active & found, col, sink)
    row = tf.where(active & ~found, tf.gather(row4col, col, batch_dims=1), row)
    min_val = tf.where(active, lowest, min_val)
    cols_seen |= (cols == col[:, tf.newaxis]) & active[:, tf.newaxis]
    return row, min_val, sink, shortest, path, cols_seen

  _, min_val, sink, shortest, path, cols_seen = tf.while_loop(
      lambda *state: tf.reduce_any(state[2] == -1), body, init)
  return sink, min_val, shortest, path, cols_seen


def _augment(sink, path, col4row, row4col, cur_row):
  """Flips the assignments along each problem's path from `sink` to `cur_row`."""
  rows = _ramp(col4row.shape[1], 1, 2)
  cols = _ramp(row4col.shape[1], 1, 2)

  def body(col, going, col4row, row4col):
    row = tf.gather(path, tf.maximum(col, 0), batch_dims=1)
    next_col = tf.gather(col4row, tf.maximum(row, 0), batch_dims=1)
    mask = going[:, tf.newaxis]
    row4col = tf.where(mask & (cols == col[:, tf.newaxis]), row[:, tf.newaxis], row4col)
    col4row = tf.where(mask & (rows == row[:, tf.newaxis]), col[:, tf.newaxis], col4row)
    return next_col, going & (row != cur_row), col4row, row4col

  _, _, col4row, row4col = tf.while_loop(
      lambda col, going, *_: tf.reduce_any(going), body,
      (sink, sink >= 0, col4row, row4col))
  return col4row, row4col


def _row_reduction(cost, row_active):
  """Initial row duals and a partial assignment, found in parallel.

  u_i = min_j cost[i, j] (and v = 0) makes every reduced cost >= 0 and keeps
  free columns at v = 0, which the rectangular problem requires; each column
  takes the first active row whose minimum it attains, so assigned pairs are
  tight and the shortest-path insertions that follow stay exact. On matching
  problems most rows are assigned here.

  Returns:
    (u [B, n], col4row [B, n], row4col [B, m]).
  """
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  tie_bits = num_cols.bit_length()
  key = tf.reduce_min(_pack(cost, tf.cast(_ramp(num_cols, 2, 3), tf.int64), tie_bits),
                      axis=2)
  row_min, best_col = _unpack(key, tie_bits)
  row4col = first_position(tf.where(row_active, best_col, -1), num_cols)
  first_chooser = tf.gather(row4col, best_col, batch_dims=1)
  col4row = tf.where(first_chooser == _ramp(num_rows, 1, 2), best_col, -1)
  return tf.where(row_active, row_min, 0.0), col4row, row4col


def linear_sum_assignment(cost: tf.Tensor, row_active: tf.Tensor) -> tf.Tensor:
  """Minimum-cost assignment of the active rows of each problem to distinct columns.

  Args:
    cost: float32 [B, n, m] with static n <= m. Finite values.
    row_active: bool [B, n]; inactive rows are left unassigned and do not
      constrain the others.

  Returns:
    int32 [B, n], the column of each active row, -1 for inactive rows.
  """
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  if num_rows is None or num_cols is None or num_rows > num_cols:
    raise ValueError(f'cost must have static n <= m, got shape {cost.shape}')
  batch = tf.shape(cost)[0]
  cost = tf.cast(cost, tf.float32)
  row_active = tf.cast(row_active, tf.bool)
  rows = _ramp(num_rows, 1, 2)
  u, col4row, row4col = _row_reduction(cost, row_active)

  def insert_row(pending, u, v, col4row, row4col):
    cur_row = index_of_true(pending, axis=1)
    searching = cur_row >= 0
    sink, min_val, shortest, path, cols_seen = _dijkstra_to_free_column(
        cost, u, v, row4col, tf.maximum(cur_row, 0), searching)
    # The rows the search expanded: the start and the owners of the seen columns.
    is_cur = rows == cur_row[:, tf.newaxis]
    own_col = tf.maximum(col4row, 0)
    expanded = is_cur | ((col4row >= 0) & tf.gather(cols_seen, own_col, batch_dims=1))
    min_val_ = min_val[:, tf.newaxis]
    # One update per variable: chained adds inside while loops trip grappler's
    # AddOpsRewrite (AlreadyExistsError on a temporary variable) in graph mode.
    u_step = tf.where(is_cur, min_val_,
                      min_val_ - tf.gather(shortest, own_col, batch_dims=1))
    u += tf.where(expanded, u_step, 0.0)
    v -= tf.where(cols_seen, min_val_ - shortest, 0.0)
    col4row, row4col = _augment(sink, path, col4row, row4col, cur_row)
    return pending & ~is_cur, u, v, col4row, row4col

  init = (row_active & (col4row < 0), u, tf.zeros([batch, num_cols]), col4row, row4col)
  _, _, _, col4row, _ = tf.while_loop(
      lambda pending, *_: tf.reduce_any(pending), insert_row, init)
  return col4row
