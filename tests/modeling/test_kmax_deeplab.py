"""kMaX-DeepLab: pixel decoder, transformer decoder, model outputs, configs."""
import gin
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import kmax_deeplab
from cmt_deeplab_tf.modeling import parameter_count
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import kmax_pixel_decoder
from cmt_deeplab_tf.modeling.decoders import kmax_transformer_decoder


@pytest.fixture(scope='module')
def tiny():
  model = builder.build_model('kmax_tiny', num_classes=5, num_clusters=8)
  return model


def test_pixel_decoder_outputs_every_stride_at_4x_its_filters():
  backbone = axial_resnet.AxialResNet(num_blocks=(1, 1, 1, 1),
                                      width_multiplier=0.125, output_stride=32)
  decoder = kmax_pixel_decoder.KMaXPixelDecoder(filters=(16, 8, 4, 2),
                                                num_blocks=(1, 2, 1, 1))
  outputs = decoder(backbone(tf.zeros([1, 65, 49, 3])))
  assert [tuple(o.shape) for o in outputs] == [
      (1, 3, 2, 64), (1, 5, 4, 32), (1, 9, 7, 16), (1, 17, 13, 8)]


def test_pixel_decoder_rejects_mismatched_stages():
  with pytest.raises(ValueError, match='4 or 5 stages'):
    kmax_pixel_decoder.KMaXPixelDecoder(filters=(16, 8, 4),
                                        num_blocks=(1, 1, 1, 1))


def test_transformer_decoder_runs_its_layers_coarse_to_fine():
  decoder = kmax_transformer_decoder.KMaXTransformerDecoder(
      num_classes=3, num_clusters=5, num_blocks=(2, 0, 1), center_channels=8,
      filters=4, num_heads=2, feed_forward_channels=8, embedding_channels=4,
      head_channels=4)
  assert decoder.layer_inputs == [0, 0, 2]
  features = [tf.zeros([2, 2, 2, 6]), tf.zeros([2, 3, 3, 6]),
              tf.zeros([2, 5, 5, 6])]
  centers, predictions = decoder(features)
  assert centers.shape == (2, 5, 8)
  assert [p[common.MASK_LOGITS].shape[1] for p in predictions] == [2, 2, 5]


def test_training_outputs_follow_the_common_keys(tiny):
  outputs = tiny(tf.zeros([2, 65, 65, 3]), training=True)
  assert outputs[common.CLASS_LOGITS].shape == (2, 8, 6)
  assert outputs[common.MASK_LOGITS].shape == (2, 17, 17, 8)
  assert outputs[common.SEMANTIC_LOGITS].shape == (2, 17, 17, 5)
  aux = outputs[common.AUX_OUTPUTS]
  assert len(aux) == 3  # One k-means layer per stride 32, 16, 8.
  for layer_outputs in aux:  # Resized to the final mask resolution.
    assert layer_outputs[common.MASK_LOGITS].shape == (2, 17, 17, 8)
    assert layer_outputs[common.CLASS_LOGITS].shape == (2, 8, 6)


def test_inference_has_no_training_outputs(tiny):
  outputs = tiny(tf.zeros([1, 33, 33, 3]), training=False)
  assert common.AUX_OUTPUTS not in outputs
  assert common.SEMANTIC_LOGITS not in outputs


def test_clustering_maps_are_each_layers_hard_assignment(tiny):
  outputs = tiny(tf.random.uniform([1, 33, 33, 3], -1, 1), training=False,
                 return_visualization=True)
  maps = outputs[common.CLUSTERING_MAPS]
  assert [m.shape[1] for m in maps] == [2, 3, 5]
  for assignment in maps:
    tf.debugging.assert_equal(tf.reduce_sum(assignment, -1),
                              tf.ones(assignment.shape[:-1]))


@pytest.mark.parametrize('kwargs', [dict(decoder_blocks=(1, 1, 1)),
                                    dict(transformer_expansion=0.5)])
def test_kmax_configs_reject_cmt_options(kwargs):
  with pytest.raises(ValueError, match='kmax_tiny'):
    builder.build_model('kmax_tiny', num_classes=3, num_clusters=4, **kwargs)


def test_a_backbone_binding_the_config_sets_is_an_error():
  with gin.unlock_config():
    gin.bind_parameter('AxialResNet.activation', 'relu')
  try:
    with pytest.raises(ValueError, match='AxialResNet.activation'):
      builder.build_model('kmax_tiny', num_classes=3, num_clusters=4)
  finally:
    gin.clear_config()


def test_tiny_semantic_head_reads_the_pixel_decoder(tiny):
  assert tiny.semantic_decoder is None


@pytest.fixture(scope='module')
def tiny_aspp():
  return builder.build_model('kmax_tiny', num_classes=5, num_clusters=8,
                             kmax_semantic_head=kmax_deeplab.ASPP)


def test_aspp_semantic_branch_predicts_classes_and_void_at_stride_4(tiny_aspp):
  outputs = tiny_aspp(tf.zeros([2, 65, 49, 3]), training=True)
  assert outputs[common.SEMANTIC_LOGITS].shape == (2, 17, 13, 5 + 1)
  assert common.SEMANTIC_LOGITS not in tiny_aspp(tf.zeros([1, 33, 33, 3]),
                                                 training=False)
  outputs, _ = tiny_aspp.forward(tf.zeros([1, 33, 33, 3]), training=False,
                                 with_semantic=True)
  assert outputs[common.SEMANTIC_LOGITS].shape == (1, 9, 9, 6)


def test_aspp_semantic_branch_is_training_only_in_the_count(tiny_aspp):
  counts = parameter_count.parameter_breakdown(tiny_aspp)
  semantic = sum(int(tf.size(v)) for v in
                 tiny_aspp.semantic_decoder.trainable_variables +
                 tiny_aspp.semantic_head.trainable_variables)
  assert counts[parameter_count.TRAINING_ONLY] == semantic > 0
  assert counts[parameter_count.INFERENCE_TOTAL] + semantic == sum(
      int(tf.size(v)) for v in tiny_aspp.trainable_variables)


def test_kmax_semantic_head_binding_is_checked():
  with pytest.raises(ValueError, match='kmax_semantic_head'):
    builder.build_model('tiny', num_classes=3, num_clusters=4,
                        kmax_semantic_head=kmax_deeplab.ASPP)
  with pytest.raises(ValueError, match="'stride4'"):
    builder.build_model('kmax_tiny', num_classes=3, num_clusters=4,
                        kmax_semantic_head='stride4')
  with gin.unlock_config():
    gin.bind_parameter('build_model.kmax_semantic_head',
                       kmax_deeplab.PIXEL_DECODER)
  try:
    with pytest.raises(ValueError, match='max_deeplab_s'):
      builder.build_model('max_deeplab_s', num_classes=3, num_clusters=4)
  finally:
    gin.clear_config()
