"""Batched, XLA-compilable exact linear assignment by shortest augmenting paths.

The algorithm is the one of scipy's `linear_sum_assignment` (Crouse, "On
implementing 2D rectangular assignment algorithms", IEEE TAES 2016, Alg. 1):
rows are inserted one at a time; each insertion runs a Dijkstra search over the
reduced costs `cost - u - v` for the cheapest path to a free column, updates the
dual variables (u, v) and flips the assignments along the path. Every step is a
vectorised op on [B, m] tensors inside `tf.while_loop`s with static shapes, so a
whole batch of problems is solved in lockstep, on any device and under XLA.
"""
import tensorflow as tf

_INFINITY = 1e30


def _dijkstra_to_free_column(cost, u, v, row4col, cur_row, searching):
  """Searches, per problem, the shortest augmenting path from row `cur_row`.

  Returns (sink [B], min_val [B], shortest [B, m], path [B, m], rows_seen [B, n],
  cols_seen [B, m]); problems with `searching` False are left untouched.
  """
  batch, num_rows, num_cols = cost.shape[0], cost.shape[1], cost.shape[2]
  batch = tf.shape(cost)[0] if batch is None else batch
  init = (
      tf.fill([batch], cur_row),                  # row being expanded
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

  def insert_row(cur_row, u, v, col4row, row4col):
    searching = row_active[:, cur_row]
    sink, min_val, shortest, path, rows_seen, cols_seen = _dijkstra_to_free_column(
        cost, u, v, row4col, cur_row, searching)
    is_cur = tf.one_hot(cur_row, num_rows, on_value=True, off_value=False)
    shortest_of_row = tf.gather(shortest, tf.maximum(col4row, 0), batch_dims=1)
    min_val_ = min_val[:, tf.newaxis]
    # One update per variable: chained adds inside while loops trip grappler's
    # AddOpsRewrite (AlreadyExistsError on a temporary variable) in graph mode.
    u_step = tf.where(is_cur[tf.newaxis, :], min_val_, min_val_ - shortest_of_row)
    u += tf.where(rows_seen, u_step, 0.0)
    v -= tf.where(cols_seen, min_val_ - shortest, 0.0)
    col4row, row4col = _augment(sink, path, col4row, row4col, cur_row)
    return cur_row + 1, u, v, col4row, row4col

  init = (tf.constant(0), tf.zeros([batch, num_rows]), tf.zeros([batch, num_cols]),
          -tf.ones([batch, num_rows], tf.int32), -tf.ones([batch, num_cols], tf.int32))
  _, _, _, col4row, _ = tf.while_loop(lambda cur_row, *_: cur_row < num_rows,
                                      insert_row, init)
  return col4row
