"""The implementations of the CMT layer, by name.

`clustering_transformer` runs the paper's equations with the classes and
functions of an `Implementation` it is handed; it does not know the faster one.
This registry, above both, names them:

- `PLAIN`: the equations as written (`clustering_transformer.PLAIN_IMPLEMENTATION`);
- `FUSED`: the same outputs with the same variables, faster (`fast_path`: the
  assignment held as pixels querying centers, folded inference batch norms,
  the separable reference prior).

`TransformerDecoder(implementation=...)` (gin) resolves its name here; the
equality of the two is `tests/modeling/test_fast_path.py`.
"""
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from cmt_deeplab_tf.modeling.layers import fast_path

PLAIN = 'plain'
FUSED = 'fused'

_IMPLEMENTATIONS = {
    PLAIN: ct.PLAIN_IMPLEMENTATION,
    FUSED: ct.Implementation(FUSED, fast_path.FusedLinearBN,
                             fast_path.FusedMultiHeadAttention,
                             fast_path.PixelsQueryCenters,
                             fast_path.separable_log_reference_prior),
}
NAMES = tuple(_IMPLEMENTATIONS)


def get(name: str) -> ct.Implementation:
  """The implementation called `name`.

  Raises:
    ValueError: On an unknown name, naming the known ones.
  """
  if name not in _IMPLEMENTATIONS:
    raise ValueError(f'Unknown CMT layer implementation={name!r}; expected one '
                     f'of {NAMES}.')
  return _IMPLEMENTATIONS[name]
