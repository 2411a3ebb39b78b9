"""The auxiliary semantic decoder: ASPP on the backbone, fused with res3, res2.

A Panoptic-DeepLab single decoder (Cheng et al., CVPR 2020; DeepLabv3+'s
decoder, Chen et al., ECCV 2018, with two low-level features), the
`auxiliary_semantic_decoder` of DeepLab2's MaX-DeepLab predictor that DeepLab2's
COCO kMaX-DeepLab trains beside the k-means decoder
(`use_auxiliary_semantic_decoder=True`; kMaX-DeepLab, Yu et al., ECCV 2022).
It reads backbone endpoints only, not the pixel decoder:

  STAGE5 [B, h/32, w/32, C5] (unactivated, DeepLab2's `stage5` =
      `feature_semantic`) -> ASPP -> [B, h/32, w/32, aspp_channels]
  for (endpoint, width) in ((RES3, s8 width), (RES2, s4 width)):
    low = 1x1 ConvBN(endpoint) [B, h_s, w_s, width]
    x = SeparableConvBN 5x5(concat(resize_align_corners(x, h_s, w_s), low))
        [B, h_s, w_s, decoder_channels]
  -> [B, h/4, w/4, decoder_channels]

(h_s = ceil(H / s) for an H x W image.) Every activation is the decoder's
(kMaX: GeLU).
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import aspp as aspp_lib
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import resize
from cmt_deeplab_tf.modeling.layers import separable_conv

HIGH_LEVEL = axial_resnet.STAGE5
# The low-level endpoints, coarsest first (DeepLab2 `auxiliary_low_level`).
LOW_LEVEL = (axial_resnet.RES3, axial_resnet.RES2)


@gin.configurable(denylist=['aspp_channels', 'decoder_channels',
                            'low_level_channels', 'activation'])
class SemanticDecoder(tf_keras.layers.Layer):
  """Backbone endpoints -> stride-4 semantic features [B, h/4, w/4, D]."""

  def __init__(self, aspp_channels, decoder_channels, low_level_channels,
               atrous_rates=(6, 12, 18), dropout_rate=0.1,
               activation=activations.RELU, name='semantic_decoder'):
    """Initializes the decoder.

    Args:
      aspp_channels: Width of the ASPP (DeepLab2 COCO: 256).
      decoder_channels: Width D of the fusion layers (DeepLab2 COCO: 256).
      low_level_channels: Projection widths of RES3 and RES2 (DeepLab2 COCO:
        64, 32).
      atrous_rates: The ASPP's three rates (DeepLab2 COCO: 6, 12, 18).
      dropout_rate: The ASPP's dropout in training (DeepLab2: 0.1).
      activation: 'relu' or 'gelu' (exact), see `activations`.
      name: The layer name.

    Raises:
      ValueError: Unless there is one projection width per low-level endpoint.
    """
    if len(low_level_channels) != len(LOW_LEVEL):
      raise ValueError(f'SemanticDecoder takes {len(LOW_LEVEL)} low-level '
                       f'widths (for {LOW_LEVEL}), got low_level_channels='
                       f'{low_level_channels}.')
    super().__init__(name=name)
    self.aspp = aspp_lib.ASPP(aspp_channels, atrous_rates, dropout_rate,
                              activation=activation, name='aspp')
    self.projections = [
        conv_bn.ConvBN(width, 1, activation=activation,
                       name=f'{endpoint}_projection')
        for endpoint, width in zip(LOW_LEVEL, low_level_channels)]
    self.fusions = [
        separable_conv.SeparableConvBN(decoder_channels, 5,
                                       activation=activation,
                                       name=f'{endpoint}_fusion')
        for endpoint in LOW_LEVEL]

  def call(self, endpoints, training=None):
    """Runs the decoder.

    Args:
      endpoints: The backbone's endpoints (`AxialResNet` output): STAGE5 at
        stride 32, RES3 at stride 8, RES2 at stride 4.
      training: Batch statistics and the ASPP's dropout.

    Returns:
      [B, h/4, w/4, decoder_channels], the size of RES2.
    """
    x = self.aspp(endpoints[HIGH_LEVEL], training=training)
    for endpoint, projection, fusion in zip(LOW_LEVEL, self.projections,
                                            self.fusions):
      low = projection(endpoints[endpoint], training=training)
      height, width = resize.spatial_size(low)
      x = tf.concat([resize.resize_align_corners(x, height, width), low],
                    axis=-1)
      x = fusion(x, training=training)
    return x
