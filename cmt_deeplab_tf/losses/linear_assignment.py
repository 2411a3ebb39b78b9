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
"""
import tensorflow as tf

_INFINITY = 1e30


def _dijkstra_to_free_column(cost, u, v, row4col, cur_row, searching):
  """Searches, per problem, the shortest augmenting path from row cur_row [B].

  Returns (sink [B], min_val [B], shortest [B, m], path [B, m], rows_seen [B, n],
  cols_seen [B, m]); problems with `searching` False are left untouched.
  """
  batch, num_rows, num_cols = cost.shape[0], cost.shape[1], cost.shape[2]
  batch = tf.shape(cost)[0] if batch is None else batch
  init = (
      cur_row,                                    # row being expanded
      tf.zeros([batch]),                          # min_val
      tf.where(searching, -1, -2),                # sink (-1 = still searching)
      tf.fill([batch, num_cols], _INFINITY),      # shortest path costs
      -tf.ones([batch, num_cols], tf.int32),      # path: previous row of a column
      tf.zeros([batch, num_rows], tf.bool),       # rows seen
      tf.zeros([batch, num_cols], tf.bool),       # columns seen
  )

  def body(row, min_val, sink, shortest, path, rows_seen, cols_seen):
    active = (sink == -1)[:, tf.newaxis]
    rows_seen |= tf.one_hot(row, num_rows, on_value=True, off_value=False) & active
    offset = tf.gather(u, row, batch_dims=1) - min_val
    reduced = tf.gather(cost, row, batch_dims=1) - v - offset[:, tf.newaxis]
    better = active & ~cols_seen & (reduced < shortest)
    path = tf.where(better, row[:, tf.newaxis], path)
    shortest = tf.where(better, reduced, shortest)
    candidates = tf.where(cols_seen, _INFINITY, shortest)
    lowest = tf.reduce_min(candidates, axis=-1)
    is_lowest = candidates == lowest[:, tf.newaxis]
    free_lowest = is_lowest & (row4col < 0)  # Ties go to free columns.
    col = tf.where(tf.reduce_any(free_lowest, -1),
                   tf.argmax(tf.cast(free_lowest, tf.int32), -1, output_type=tf.int32),
                   tf.argmax(tf.cast(is_lowest, tf.int32), -1, output_type=tf.int32))
    owner = tf.gather(row4col, col, batch_dims=1)
    active = active[:, 0]
    sink = tf.where(active & (owner < 0), col, sink)
    row = tf.where(active & (owner >= 0), owner, row)
    min_val = tf.where(active, lowest, min_val)
    cols_seen |= (tf.one_hot(col, num_cols, on_value=True, off_value=False) &
                  active[:, tf.newaxis])
    return row, min_val, sink, shortest, path, rows_seen, cols_seen

  _, min_val, sink, shortest, path, rows_seen, cols_seen = tf.while_loop(
      lambda *state: tf.reduce_any(state[2] == -1), body, init)
  return sink, min_val, shortest, path, rows_seen, cols_seen


def _augment(sink, path, col4row, row4col, cur_row):
  """Flips the assignments along each problem's path from `sink` to `cur_row`."""
  num_rows, num_cols = col4row.shape[1], row4col.shape[1]

  def body(col, going, col4row, row4col):
    row = tf.gather(path, tf.maximum(col, 0), batch_dims=1)
    next_col = tf.gather(col4row, tf.maximum(row, 0), batch_dims=1)
    mask = going[:, tf.newaxis]
    row4col = tf.where(mask & tf.one_hot(col, num_cols, on_value=True, off_value=False),
                       row[:, tf.newaxis], row4col)
    col4row = tf.where(mask & tf.one_hot(row, num_rows, on_value=True, off_value=False),
                       col[:, tf.newaxis], col4row)
    return next_col, going & (row != cur_row), col4row, row4col

  _, _, col4row, row4col = tf.while_loop(
      lambda col, going, *_: tf.reduce_any(going), body,
      (sink, sink >= 0, col4row, row4col))
  return col4row, row4col


def index_of_true(x: tf.Tensor, axis: int) -> tf.Tensor:
  """int32: index of the first True along `axis` of a bool tensor, -1 if none."""
  index = tf.argmax(tf.cast(x, tf.int32), axis=axis, output_type=tf.int32)
  return tf.where(tf.reduce_any(x, axis=axis), index, -1)


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
  best_col = tf.argmin(cost, axis=2, output_type=tf.int32)
  chooses = (tf.one_hot(best_col, num_cols, on_value=True, off_value=False) &
             row_active[:, :, tf.newaxis])                                 # [B, n, m]
  row4col = index_of_true(chooses, axis=1)
  assigned = tf.one_hot(row4col, num_rows, axis=1, on_value=True, off_value=False)
  u = tf.where(row_active, tf.reduce_min(cost, axis=2), 0.0)
  return u, index_of_true(assigned, axis=2), row4col


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
  u, col4row, row4col = _row_reduction(cost, row_active)
  # Rows still to insert, per problem, first in a [B, n] list.
  to_insert = row_active & (col4row < 0)
  insert_order = tf.argsort(tf.cast(~to_insert, tf.int32), axis=-1, stable=True)
  num_to_insert = tf.reduce_sum(tf.cast(to_insert, tf.int32), axis=-1)

  def insert_row(step, u, v, col4row, row4col):
    cur_row = insert_order[:, step]
    searching = step < num_to_insert
    sink, min_val, shortest, path, rows_seen, cols_seen = _dijkstra_to_free_column(
        cost, u, v, row4col, cur_row, searching)
    is_cur = tf.one_hot(cur_row, num_rows, on_value=True, off_value=False)
    shortest_of_row = tf.gather(shortest, tf.maximum(col4row, 0), batch_dims=1)
    min_val_ = min_val[:, tf.newaxis]
    # One update per variable: chained adds inside while loops trip grappler's
    # AddOpsRewrite (AlreadyExistsError on a temporary variable) in graph mode.
    u_step = tf.where(is_cur, min_val_, min_val_ - shortest_of_row)
    u += tf.where(rows_seen, u_step, 0.0)
    v -= tf.where(cols_seen, min_val_ - shortest, 0.0)
    col4row, row4col = _augment(sink, path, col4row, row4col, cur_row)
    return step + 1, u, v, col4row, row4col

  init = (tf.constant(0), u, tf.zeros([batch, num_cols]), col4row, row4col)
  _, _, _, col4row, _ = tf.while_loop(
      lambda step, *_: step < tf.reduce_max(num_to_insert), insert_row, init)
  return col4row
