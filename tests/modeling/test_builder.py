"""Tests of the named model configurations."""
import time

import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import parameter_count
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from tests.modeling import cmt_test_utils

# Supplement Table 2 (COCO: 133 classes, 128 clusters), inference parameters.
PAPER_PARAMETERS = {
    'max_deeplab_s': 61.9e6,
    'cmt_deeplab_s': 94.9e6,
    'cmt_deeplab_l': 135.2e6,
    'cmt_deeplab_l_rfn': 270.3e6,
}


@pytest.mark.parametrize('kwargs', [
    dict(name='cmt_deeplab_xl'),
    dict(name='tiny', num_classes=0),
    dict(name='tiny', num_clusters=-1),
    dict(name='max_deeplab_s', decoder_blocks=(2, 1, 1)),
    dict(name='max_deeplab_s', transformer_expansion=0),
    dict(name='tiny', transformer_expansion=0.5),  # Its own transformer width.
])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    builder.build_model(**kwargs)


def _transformer_filters(name, expansion):
  """Filters of each transformer layer of a named config, by layer name."""
  model = builder.build_model(name, num_classes=3, num_clusters=4,
                              width_multiplier=1 / 32,
                              transformer_expansion=expansion)
  model(tf.zeros([1, 33, 33, 3]), training=False)
  return {layer.name: layer.options.filters for layer in model.submodules
          if isinstance(layer, ct.ClusteringTransformerLayer)}


@pytest.mark.parametrize('name, published', [
    ('max_deeplab_s', [128] * 4),         # Stage 5 and the stride-16 decoder.
    ('cmt_deeplab_s', [128] * 4 + [64] * 2 + [32] * 2),  # Strides 16, 8, 4.
])
def test_transformer_expansion_scales_the_128_transformer_filters(name,
                                                                   published):
  # DeepLab2's base_transformer_expansion: 128 * expansion * stride / 16.
  assert sorted(_transformer_filters(name, 1.0).values(),
                reverse=True) == published
  assert sorted(_transformer_filters(name, 0.25).values(), reverse=True) == [
      f // 4 for f in published]


def test_tiny_trains_fast_on_cpu():
  model = builder.build_model('tiny', num_classes=8, num_clusters=16)
  images = tf.random.stateless_uniform([8, 129, 129, 3], [0, 0], -1.0, 1.0)

  model(images[:1])
  start = time.perf_counter()
  with tf.GradientTape() as tape:
    loss = cmt_test_utils.sum_of_outputs(model(images, training=True))
  gradients = tape.gradient(loss, model.trainable_variables)
  elapsed = time.perf_counter() - start
  assert all(g is not None for g in gradients)
  counts = parameter_count.parameter_breakdown(model)
  assert 1e6 < counts[parameter_count.INFERENCE_TOTAL] < 3e6
  # An eager forward + backward of a batch of 8 at 129x129 (~0.4 s inside a
  # tf.function on 2 cores); a generous bound keeps the test robust to load.
  assert elapsed < 30.0


def test_decoder_blocks_set_the_number_of_cmt_layers():
  model = builder.build_model('tiny', num_classes=3, num_clusters=4,
                              decoder_blocks=(1, 2, 1))
  outputs = model(tf.zeros([1, 33, 33, 3]), training=True)
  assert [len(stage) for stage in model.pixel_decoder.stages] == [1, 2, 1]
  assert len(outputs[common.AUX_OUTPUTS]) == 3  # 4 CMT layers.


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(PAPER_PARAMETERS))
def test_parameter_counts_match_the_paper(name):
  model = builder.build_model(name, num_classes=133, num_clusters=128)
  outputs = model(tf.zeros([1, 33, 33, 3]), training=True)
  assert outputs[common.MASK_LOGITS].shape == (1, 9, 9, 128)
  counts = parameter_count.parameter_breakdown(model)
  total = counts[parameter_count.INFERENCE_TOTAL]
  assert abs(total / PAPER_PARAMETERS[name] - 1.0) < 0.03, counts
