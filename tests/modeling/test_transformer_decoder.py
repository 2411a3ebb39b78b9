"""Tests of the transformer-layer stack: widths and heads by pixel stride."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling.decoders import transformer_decoder

_LOCATIONS = ['decoder_stage0_block0', 'decoder_stage1_block0',
              'decoder_stage2_block0']
_STRIDES = [16, 8, 4]


def _build(**kwargs):
  """A 3-layer stack at strides 16, 8, 4, run once so every variable exists."""
  stack = transformer_decoder.TransformerDecoder(
      transformer_decoder.DecoderOptions(
          _LOCATIONS, _STRIDES, num_clusters=4, center_channels=16,
          filters=32, num_heads=8, feed_forward_channels=16, **kwargs))
  centers = stack.initial_centers(1)
  for location, stride in zip(_LOCATIONS, _STRIDES):
    pixels = tf.ones([1, 64 // stride, 64 // stride, 8])
    stack.transformer_layers[location](pixels, centers, training=False)
  return stack


def _logit_norm_heads(layer):
  """Heads of each attention of a layer, from its per-head logit norms."""
  return {v.shape[0] for v in layer.weights
          if 'logit_batch_norm/gamma' in v.name}


def _key_channels(layer):
  return {v.shape[-1] for v in layer.weights if 'pixel_key/dense' in v.name}


@pytest.mark.parametrize('scale_heads,heads', [(True, [8, 4, 2]),
                                               (False, [8, 8, 8])])
def test_heads_and_widths_by_stride(scale_heads, heads):
  stack = _build(scale_heads_with_stride=scale_heads)
  layers = [stack.transformer_layers[location] for location in _LOCATIONS]
  # Width: filters * stride / 16 key channels (32, 16, 8).
  assert [_key_channels(layer) for layer in layers] == [{32}, {16}, {8}]
  assert [_logit_norm_heads(layer) for layer in layers] == [{h} for h in heads]


def test_scaling_the_heads_changes_only_the_logit_norms():
  def counts(stack):
    return {v.name: int(np.prod(v.shape)) for v in stack.weights
            if 'logit_batch_norm' not in v.name}
  assert counts(_build(scale_heads_with_stride=True)) == counts(
      _build(scale_heads_with_stride=False))
