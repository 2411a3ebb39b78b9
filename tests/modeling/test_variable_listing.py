"""Every named model keeps its variables and checkpoint keys.

Compares each model of `builder.MODELS` with the listing committed before the
forward pass was restructured (`variable_listing.py`): the same variables with
the same names, shapes and `tf.train.Checkpoint` keys, so
checkpoints written before the change restore after it.
"""
import pytest

from cmt_deeplab_tf.modeling import builder
from tests.modeling import variable_listing

# Full-size models take 10-60 s each to build; tiny and MaX-DeepLab-S (the one
# with transformer layers inside its backbone) run in the default suite.
_FAST = ('tiny', 'kmax_tiny', 'max_deeplab_s')


def test_the_listing_covers_every_named_model():
  assert sorted(variable_listing.load()) == sorted(builder.MODELS)


@pytest.mark.parametrize('name', [
    name if name in _FAST else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(builder.MODELS)])
def test_variables_and_checkpoint_keys_are_unchanged(name):
  expected = sorted(variable_listing.load()[name])
  listed = sorted(variable_listing.list_model(name))
  assert len(listed) == len(expected)
  for got, want in zip(listed, expected):
    assert got == want  # [variable name, shape, checkpoint key]
