"""Recompute (gradient checkpointing) of a block or layer in the backward pass.

`recompute(fn, inputs)` runs `fn` without keeping its intermediate activations for
the backward pass; the backward pass runs `fn` again to get them
(`tf.recompute_grad`; Chen et al., "Training Deep Nets with Sublinear Memory
Cost", 2016). Only the inputs of each recomputed block stay in memory. DeepLab2
recomputes the axial blocks of its backbones by default
(`axial_use_recompute_grad`). Which parts of a model are recomputed is one
setting, the memory policy `build_model.recompute` (`recompute_policy`), which
the model's forward loop applies.

A recomputed function must compute exactly what it computed in the forward pass,
and must change state only once. Two things in this model would otherwise differ:

- random ops (drop path): `replayable(draw)` records every random tensor drawn in
  the forward pass and hands the same tensors back, in the same order, when the
  function is recomputed;
- batch-norm moving statistics: `is_recomputing()` is true while the backward pass
  reruns a function; `normalization.BatchNormalization` skips its moving-average
  update then, so each step updates the statistics once, from the same batch
  statistics as without recompute. (DeepLab2's recompute updates them twice.)

`tf.recompute_grad` gates a rerun on the gradient of the function's *first*
output only (a data dependency on one of its elements). When that output is
unused, e.g. the assignment logits of the last CMT layer, its gradient is a zero
constant, grappler folds the gate away, and the rerun runs at the start of the
backward pass, side by side with everything else (at 1025x1025, 0.6 GiB more
peak memory for CMT-DeepLab-S). `recompute` therefore hands `tf.recompute_grad`
each output gradient only once all of them exist (`_gradients_together`).

Calls that do not depend on each other (the loss terms of every supervised
layer) would otherwise run side by side, in the forward pass and in their reruns,
each with its own transient memory: TensorFlow's executor starts each as soon as
it can. `after(inputs, earlier)` chains two of them: the next call's `inputs` are
only available once `earlier` (an output of the previous call) is, and the
gradient of `earlier` is only complete once the gradients of `inputs` exist, so
the previous call's rerun waits for the next one's backward to finish.

Variables read inside `fn` receive gradients through `tf.recompute_grad`'s
`variables` argument. Variables must exist before the first recomputed call:
`recompute` runs `fn` plainly until it has run once for the layer that owns it,
and a recomputed call that creates a variable is an error. (Keras' `built` flags
cannot tell: a layer is `built` before its first call has created its sublayers'
variables, and sublayers used through methods other than `__call__` never become
`built`.)
"""
import threading
import weakref
from typing import Any, Callable, List, Optional, Sequence

import tensorflow as tf
import tf_keras


class _Replay:
  """The random tensors of one recomputed call, and where the replay is."""

  def __init__(self):
    self.tensors: List[tf.Tensor] = []
    self.recomputing = False
    self.position = 0


_LOCAL = threading.local()
# Layers whose function has run plainly once, so their variables exist.
_HAS_RUN: 'weakref.WeakSet[tf_keras.layers.Layer]' = weakref.WeakSet()


def _active() -> Optional[_Replay]:
  return getattr(_LOCAL, 'replay', None)


def is_recomputing() -> bool:
  """Whether the backward pass is rerunning a recomputed function right now."""
  replay = _active()
  return replay is not None and replay.recomputing


def replayable(draw: Callable[[], tf.Tensor]) -> tf.Tensor:
  """`draw()`, or in a recomputation the tensor the forward pass drew here.

  Every random op of a recomputable layer must go through this function.
  """
  replay = _active()
  if replay is None:
    return draw()
  if not replay.recomputing:
    tensor = draw()
    replay.tensors.append(tensor)
    return tensor
  if replay.position >= len(replay.tensors):
    raise RuntimeError('A recomputed function drew more random tensors than its '
                       'forward pass; it must draw the same ones in the same order.')
  tensor = replay.tensors[replay.position]
  replay.position += 1
  return tensor


def _run_with(replay: _Replay, fn, args):
  previous = _active()
  _LOCAL.replay = replay
  try:
    return fn(*args)
  finally:
    _LOCAL.replay = previous


def recompute(fn: Callable[..., Any], inputs: Sequence[Any], enabled: bool = True,
              layer: Optional[tf_keras.layers.Layer] = None) -> Any:
  """Runs `fn(*inputs)`, recomputing it in the backward pass when `enabled`.

  Args:
    fn: A function of `inputs` returning a nest of float tensors (e.g. a dict).
      It may read variables; its non-tensor arguments (training mode, ...) are
      bound by closure.
    inputs: Tensors or None (passed through as None).
    enabled: False runs `fn(*inputs)` plainly (for inference, or when the
      switch is off).
    layer: The layer that owns `fn`'s variables; until `fn` has run once for
      it, `fn` runs plainly so that its variables get created outside the
      recomputed function.

  Returns:
    What `fn(*inputs)` returns.

  Raises:
    RuntimeError: If the recomputed `fn` created variables of `layer`.
  """
  if not enabled or _active() is not None or (layer is not None and
                                               layer not in _HAS_RUN):
    # Plainly: switched off, inside another recomputed call (which covers this
    # one), or the first call, which creates the layer's variables.
    outputs = fn(*inputs)
    if layer is not None and _active() is None:
      _HAS_RUN.add(layer)
    return outputs
  inputs = list(inputs)
  present = [i for i, x in enumerate(inputs) if x is not None]
  replay = _Replay()
  structure = []

  def flat_fn(*tensors):
    args = list(inputs)
    for index, tensor in zip(present, tensors):
      args[index] = tensor
    if structure:  # The forward pass has run: this is the backward's rerun.
      replay.recomputing, replay.position = True, 0
    outputs = _run_with(replay, fn, args)
    structure[:] = [outputs]
    return tf.nest.flatten(outputs)

  num_variables = None if layer is None else len(layer.variables)
  flat = tf.recompute_grad(flat_fn)(*[inputs[i] for i in present])
  if len(flat) > 1:
    flat = _gradients_together(flat)
  if layer is not None and len(layer.variables) != num_variables:
    raise RuntimeError(
        f'Layer {layer.name!r} created variables inside a recomputed call; call it '
        'once in training mode before (e.g. task.create_all_variables).')
  return tf.nest.pack_sequence_as(structure[0], flat)


def _gradients_together(tensors: List[tf.Tensor]) -> List[tf.Tensor]:
  """Returns `tensors`; in the backward pass each gradient waits for all of them.

  The values and gradients are unchanged (identities under a control dependency on
  every upstream gradient, which the graph executor honours; XLA schedules on its
  own).
  """
  @tf.custom_gradient
  def together(*tensors):
    def gradient(*upstream):
      with tf.control_dependencies([u for u in upstream if u is not None]):
        return [None if u is None else tf.identity(u) for u in upstream]
    return [tf.identity(t) for t in tensors], gradient
  return together(*tensors)


def after(inputs: tf.Tensor, earlier: tf.Tensor) -> tf.Tensor:
  """Returns `inputs` once `earlier` exists; `earlier`'s gradient waits for theirs.

  The value and every gradient are unchanged: `inputs` pass through an identity
  that waits for `earlier`, and `earlier` receives an extra zero gradient that is
  computed after the gradient of `inputs` (control dependencies, which the graph
  executor honours; XLA schedules on its own).

  Args:
    inputs: A float tensor, e.g. the input of a recomputed call.
    earlier: A float tensor computed before, e.g. the output of the previous
      recomputed call.
  """
  @tf.custom_gradient
  def tie(inputs, earlier):
    def gradient(upstream):
      with tf.control_dependencies([upstream]):
        return tf.identity(upstream), tf.zeros_like(earlier)
    with tf.control_dependencies([earlier]):
      return tf.identity(inputs), gradient
  return tie(inputs, earlier)
