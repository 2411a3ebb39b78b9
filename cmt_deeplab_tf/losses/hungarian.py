"""Batched, XLA-compilable exact Hungarian matching by shortest augmenting paths.

Matches the rows of a cost matrix to distinct columns at minimum total cost.

The algorithm is the one of scipy's `linear_sum_assignment` (Crouse, "On
implementing 2D rectangular assignment algorithms", IEEE TAES 2016, Alg. 1):
rows are inserted one at a time; each insertion runs a Dijkstra search over the
reduced costs `cost - u - v` for the cheapest path to a free column, updates the
dual variables (u, v) and flips the matches along the path. A parallel row
reduction first matches every row whose cheapest column is not claimed by an
earlier row; a few rounds of a zero-slack auction on the rows it leaves free
then match most of those in parallel, so only the remaining rows need the
sequential insertions. The auction keeps the duals feasible and every matched
pair tight, so the insertions that follow still find the exact optimum.

Every problem of the batch runs its own state machine inside ONE
`tf.while_loop` with static shapes: an iteration scans one column of each
problem's current search; a search that reaches a free column updates the duals
and flips its path in the same iteration, and the problem starts its next
pending row in the next one. The loop runs max over problems of that problem's
own search steps, not the sum over insertions of the slowest problem's.
Bookkeeping that makes this possible without extra loops:
- a column's scan adds its path cost to v and marks it scanned by setting its
  path cost to a large negative value (never improved on, skipped by the
  search); when the search ends, the final path cost is subtracted from the scanned columns,
  which is scipy's v update;
- u is never stored: a matched pair is tight, so u of a row reached through
  column j is cost[row, j] - v[j] (a pending row uses its row minimum, a lower
  bound of cost - v as v <= 0; any lower bound gives the same search);
- each column keeps, as a bit set, the columns of the search-tree path that
  reached it, so the path to the sink is known at once and flipped in one
  elementwise step instead of a pointer walk.

Speed on XLA's CPU backend (a search step does ~1k elements of work, so its
cost is kernel dispatch): index searches use `reduce_min` over packed int64
keys (path cost, tie-break) instead of `argmin`, whose (value, index) reduction
is not vectorised; rows of the cost are read with per-problem dynamic slices
(static batch) because XLA splits a gather from the whole [B, n, m] cost
(> 256 KB) over threads, which costs more than the gather. The auction,
which runs a few rounds rather than hundreds of steps, gathers its bidders'
rows in one `tf.gather` per round.
"""
import tensorflow as tf

_INFINITY = 1e30
_SCANNED = -3e38  # Path cost mark of a scanned column: never improved on.
# Auction warm start: free rows bidding per round, the most rounds, and the
# fewest free rows in some problem for which another round is worth its cost
# (~50 us under XLA:CPU, ~10 search steps).
_AUCTION_BIDDERS = 48
_AUCTION_ROUNDS = 12
_AUCTION_MIN_FREE = 8


def _ramp(size: int, axis: int, rank: int) -> tf.Tensor:
  """int32 0..size-1 along `axis`, shaped to broadcast against a rank-`rank` tensor."""
  shape = [1] * rank
  shape[axis] = size
  return tf.reshape(tf.range(size, dtype=tf.int32), shape)


def _batch_size(x: tf.Tensor):
  """The leading dimension of x: a Python int when static, else a scalar tensor.

  Static where known, so `tf.while_loop` states built from it keep the static
  shapes their loop bodies produce.
  """
  return x.shape[0] or tf.shape(x)[0]


def index_of_true(x: tf.Tensor, axis: int) -> tf.Tensor:
  """int32: index of the first True along `axis` of a bool tensor, -1 if none."""
  size = x.shape[axis]
  first = tf.reduce_min(tf.where(x, _ramp(size, axis, x.shape.rank), size), axis=axis)
  return tf.where(first < size, first, -1)


def first_position(index: tf.Tensor, size: int) -> tf.Tensor:
  """int32 [B, size]: for each value j, the first i with index[b, i] == j, else -1.

  Negative entries of `index` [B, n] are skipped. For a one-to-one matching
  this is its inverse. A scatter over the n entries, not a [B, n, size] search.
  """
  num = index.shape[1]
  batch = _batch_size(index)
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


def _cost_rows(cost: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
  """float32 [B, m]: cost[b, row[b]] of cost [B, n, m], row int32 [B]."""
  batch, num_cols = cost.shape[0], cost.shape[2]
  if batch is None:
    return tf.gather(cost, row, batch_dims=1)
  return tf.concat([tf.slice(cost, tf.stack([b, row[b], 0]), [1, 1, num_cols])[0]
                    for b in range(batch)], axis=0)


def _column_bits(col: tf.Tensor, num_words: int) -> tf.Tensor:
  """int64 [..., W]: the bit set {col} of int32 col [...] in W 64-bit words."""
  bit = tf.bitwise.left_shift(tf.constant(1, tf.int64),
                              tf.cast(col[..., tf.newaxis] % 64, tf.int64))
  word = tf.range(num_words)
  return tf.where(col[..., tf.newaxis] // 64 == word, bit, tf.constant(0, tf.int64))


def _row_reduction(cost, row_active):
  """Initial row duals and a partial matching, found in parallel.

  u_i = min_j cost[i, j] (and v = 0) makes every reduced cost >= 0 and keeps
  free columns at v = 0, which the rectangular problem requires; each column
  takes the first active row whose minimum it attains, so matched pairs are
  tight and the shortest-path insertions that follow stay exact. On matching
  problems most rows are matched here.

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


def _pending_rows(pending):
  """The rows left unmatched, in increasing order.

  Args:
    pending: bool [B, n].

  Returns:
    (order [B, n], the k-th pending row at k (0 past the end); count [B]).
  """
  count = tf.reduce_sum(tf.cast(pending, tf.int32), axis=1)
  position = tf.where(pending, tf.cumsum(tf.cast(pending, tf.int32), axis=1) - 1, -1)
  return tf.maximum(first_position(position, pending.shape[1]), 0), count


def _auction(cost, row_active, col4row, row4col):
  """Zero-slack Jacobi auction rounds on the rows the row reduction left free.

  Each round, the first `_AUCTION_BIDDERS` free rows of each problem (their cost
  rows gathered into a [B, F, m] tensor) bid for their cheapest column under the
  reduced costs `cost - v`; the bid is the gap to the second cheapest. Each
  column takes its highest bid (ties to the lowest row), its v falls by the
  bid, and its previous owner becomes free. The winner's reduced cost there
  equals its second cheapest, which no other column undercuts (v only falls),
  so with u = cost - v on matched pairs the duals stay feasible and every
  matched pair tight; columns never bid on stay free with v = 0. Rounds stop
  after `_AUCTION_ROUNDS` or once no problem has `_AUCTION_MIN_FREE` free rows.

  Args:
    cost: float32 [B, n, m]; row_active: bool [B, n].
    col4row, row4col: int32 [B, n] and [B, m] of `_row_reduction`.

  Returns:
    (v [B, m], col4row [B, n], row4col [B, m]).
  """
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  batch = _batch_size(cost)
  num_bidders = min(_AUCTION_BIDDERS, num_rows)
  col_bits, row_bits = num_cols.bit_length(), num_rows.bit_length()
  cols = tf.cast(_ramp(num_cols, 2, 3), tf.int64)
  problem_offset = num_cols * tf.range(batch)[:, tf.newaxis]

  def bid(r, v, col4row, row4col):
    order, num_free = _pending_rows(row_active & (col4row < 0))
    rows = order[:, :num_bidders]  # [B, F]
    bidding = _ramp(num_bidders, 1, 2) < num_free[:, tf.newaxis]
    reduced = tf.gather(cost, rows, batch_dims=1) - v[:, tf.newaxis, :]  # [B, F, m]
    best, best_col = _unpack(tf.reduce_min(_pack(reduced, cols, col_bits), axis=2),
                             col_bits)
    second = tf.reduce_min(
        tf.where(cols == tf.cast(best_col, tf.int64)[..., tf.newaxis], _INFINITY, reduced),
        axis=2)
    # The highest bid has the lowest key (best - second, row).
    key = _pack(best - second, tf.cast(rows, tf.int64), row_bits)
    segment = tf.where(bidding, best_col + problem_offset, batch * num_cols)
    win = tf.math.unsorted_segment_min(tf.reshape(key, [-1]), tf.reshape(segment, [-1]),
                                       batch * num_cols + 1)  # The last one is a dump.
    win = tf.reshape(win[:-1], [batch, num_cols])
    won = win < tf.int64.max  # Empty segments hold the int64 maximum.
    minus_bid, winner = _unpack(tf.where(won, win, 0), row_bits)
    row4col = tf.where(won, winner, row4col)
    return r + 1, tf.where(won, v + minus_bid, v), first_position(row4col, num_rows), row4col

  def worth_a_round(r, v, col4row, row4col):
    num_free = tf.reduce_sum(tf.cast(row_active & (col4row < 0), tf.int32), axis=1)
    return (r < _AUCTION_ROUNDS) & tf.reduce_any(num_free >= _AUCTION_MIN_FREE)

  _, v, col4row, row4col = tf.while_loop(
      worth_a_round, bid, (0, tf.zeros([batch, num_cols]), col4row, row4col))
  return v, col4row, row4col


def _relax(reduced, searching, row, row_path, shortest, path, paths):
  """Relaxes the unscanned columns through the row each search expands.

  Args:
    reduced: float32 [B, m], path cost of every column through `row`.
    searching: bool [B]; row: int32 [B]; row_path: int64 [B, W], the columns on
      the path to `row`.
    shortest, path, paths: per column, float32 [B, m] path cost (_SCANNED
      once scanned), int32 [B, m] previous row, int64 [B, m, W] columns on its path.

  Returns:
    The updated (shortest, path, paths).
  """
  better = searching[:, tf.newaxis] & (reduced < shortest)  # False when scanned.
  return (tf.where(better, reduced, shortest),
          tf.where(better, row[:, tf.newaxis], path),
          tf.where(better[..., tf.newaxis], row_path[:, tf.newaxis, :], paths))


def _cheapest_column(shortest, row4col):
  """(path cost float32 [B], column int32 [B], is free bool [B]) of the next scan.

  Ties go to a free column, then to the lowest index, as in scipy; scanned
  columns are skipped.
  """
  num_cols = shortest.shape[1]
  tie_bits = (2 * num_cols).bit_length()
  tie_key = tf.cast(_ramp(num_cols, 1, 2) + tf.where(row4col < 0, 0, num_cols), tf.int64)
  candidates = tf.where(shortest == _SCANNED, float('inf'), shortest)
  lowest, tie = _unpack(tf.reduce_min(_pack(candidates, tie_key, tie_bits), axis=1),
                        tie_bits)
  return lowest, tie % num_cols, tie < num_cols


def min_cost_matching(cost: tf.Tensor, row_active: tf.Tensor) -> tf.Tensor:
  """Minimum-cost matching of the active rows of each problem to distinct columns.

  Args:
    cost: float32 [B, n, m] with static n <= m. Finite values. A static B is
      faster under XLA (see the module docstring).
    row_active: bool [B, n]; inactive rows are left unmatched and do not
      constrain the others.

  Returns:
    int32 [B, n], the column of each active row, -1 for inactive rows.
  """
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  if num_rows is None or num_cols is None or num_rows > num_cols:
    raise ValueError(f'cost must have static n <= m, got shape {cost.shape}')
  batch = _batch_size(cost)
  cost = tf.cast(cost, tf.float32)
  row_active = tf.cast(row_active, tf.bool)
  cols = _ramp(num_cols, 1, 2)
  num_words = -(-num_cols // 64)
  col_bits = _column_bits(tf.range(num_cols), num_words)  # [m, W]
  row_min, col4row, row4col = _row_reduction(cost, row_active)
  v, col4row, row4col = _auction(cost, row_active, col4row, row4col)
  order, num_pending = _pending_rows(row_active & (col4row < 0))
  order_u = tf.gather(row_min, order, batch_dims=1)

  def step(k, cur_row, row, through, row_u, row_path, shortest, v, path, paths, row4col):
    """One scan per searching problem; a finished search starts the next row."""
    searching = cur_row >= 0
    row_cost = _cost_rows(cost, row) - v
    # u[row] - path cost of row: row_u for a pending row, else cost - v on the
    # tight edge it was reached through (v of scanned columns holds + path cost).
    offset = tf.where(through < 0, row_u,
                      tf.gather(row_cost, tf.maximum(through, 0), batch_dims=1))
    reduced = row_cost - offset[:, tf.newaxis]
    shortest, path, paths = _relax(reduced, searching, row, row_path, shortest, path,
                                   paths)
    lowest, col, free = _cheapest_column(shortest, row4col)
    found = searching & free
    scanned = searching[:, tf.newaxis] & (cols == col[:, tf.newaxis])
    lowest_, found_ = lowest[:, tf.newaxis], found[:, tf.newaxis]
    shortest = tf.where(scanned, _SCANNED, shortest)
    # A scanned column's v gains its path cost; the finished search takes the
    # final one from all of them: v_j -= lowest - shortest_j as in scipy.
    v = tf.where(scanned, v + lowest_, v) - tf.where(
        found_ & (shortest == _SCANNED), lowest_, 0.0)
    col_path = tf.gather(paths, col, batch_dims=1) | tf.gather(col_bits, col)
    on_path = tf.reduce_any(
        tf.bitwise.bitwise_and(col_path[:, tf.newaxis, :], col_bits) != 0, axis=2)
    next_row = tf.maximum(tf.gather(row4col, col, batch_dims=1), 0)
    row4col = tf.where(found_ & on_path, path, row4col)
    # Next state: continue through the owner of col, or start a pending row.
    go_on = searching & ~found
    start = ~go_on & (k < num_pending)
    k_ = tf.minimum(k, num_rows - 1)
    new_row = tf.gather(order, k_, batch_dims=1)
    row_u = tf.where(start, tf.gather(order_u, k_, batch_dims=1), row_u)
    through = tf.where(start, -1, tf.where(go_on, col, through))
    row_path = tf.where(start[:, tf.newaxis], tf.constant(0, tf.int64),
                        tf.where(go_on[:, tf.newaxis], col_path, row_path))
    cur_row = tf.where(start, new_row, tf.where(found, -1, cur_row))
    row = tf.where(start, new_row, tf.where(go_on, next_row, row))
    shortest = tf.where(start[:, tf.newaxis], _INFINITY, shortest)
    return (k + tf.cast(start, tf.int32), cur_row, row, through, row_u, row_path,
            shortest, v, path, paths, row4col)

  has_pending = num_pending > 0
  init = (
      tf.cast(has_pending, tf.int32),              # pending rows started
      tf.where(has_pending, order[:, 0], -1),      # row being inserted, -1 if done
      order[:, 0],                                 # row the next scan expands
      -tf.ones_like(num_pending),                  # column row was reached through
      order_u[:, 0],                               # u of the pending row started
      tf.zeros([batch, num_words], tf.int64),      # columns on the path to row
      tf.fill([batch, num_cols], _INFINITY),       # path costs, or _SCANNED
      v,                                           # column duals
      -tf.ones([batch, num_cols], tf.int32),       # path: previous row of a column
      tf.zeros([batch, num_cols, num_words], tf.int64),  # columns on its path
      row4col,
  )
  state = tf.while_loop(lambda k, cur_row, *_: tf.reduce_any(cur_row >= 0), step, init)
  return tf.where(row_active, first_position(state[-1], num_rows), -1)
