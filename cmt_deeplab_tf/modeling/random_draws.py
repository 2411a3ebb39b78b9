"""The random draws of a training step: stateless, from the step's own seed.

The trainer traces every per-replica step inside `seeded(seed)`, with a seed
[2] derived from the run's seed, the global step, the micro-batch and the
replica. In there, the n-th draw of the traced step (drop path's masks, the
instance-discrimination loss's pixel sampling) is
`stateless_uniform(shape, fold_in(seed, n))`: a function of the run's seed and
the step only, so a run resumed from a checkpoint draws at step s exactly what
an uninterrupted run drew there, and no generator state needs checkpointing.

Outside `seeded` (a training-mode call outside the trainer, e.g. building the
variables), `uniform` is TensorFlow's stateful `tf.random.uniform`, which the
global seed (`tf_keras.utils.set_random_seed`) makes repeatable.
"""
import contextlib
import threading

import tensorflow as tf

# Per thread: a replica's step is traced in its own thread under MirroredStrategy.
_LOCAL = threading.local()


@contextlib.contextmanager
def seeded(seed: tf.Tensor):
  """Within the block, `uniform` draws statelessly from `seed` (int32/int64 [2])."""
  previous = getattr(_LOCAL, 'state', None)
  _LOCAL.state = {'seed': seed, 'draws': 0}
  try:
    yield
  finally:
    _LOCAL.state = previous


def uniform(shape, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  """float32 uniform in [minval, maxval) of `shape`, seeded as the module says."""
  state = getattr(_LOCAL, 'state', None)
  if state is None:
    return tf.random.uniform(shape, minval, maxval)
  seed = tf.random.experimental.stateless_fold_in(state['seed'], state['draws'])
  state['draws'] += 1
  return tf.random.stateless_uniform(shape, seed, minval, maxval)
