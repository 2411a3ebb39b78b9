"""kMaX-DeepLab: the k-means mask transformer, the third model beside CMT and MaX.

images -> backbone (output stride 32) -> kMaX pixel decoder (strides 32, 16,
8, 4; `kmax_pixel_decoder`) -> kMaX transformer decoder (k-means layers on the
stride 32, 16 and 8 outputs; `kmax_transformer_decoder`) -> heads on the final
centers and the stride-4 output. As DeepLab2's `KMaXDeepLab` [1]: every layer's
own predictor gives the deep supervision (AUX_OUTPUTS, mask logits resized to
stride 4 as DeepLab2 resizes them), and a training-only semantic branch gives
SEMANTIC_LOGITS at stride 4. The branch is a choice (`build_network`'s
`semantic_head`, gin `build_model.kmax_semantic_head`):

  'aspp': DeepLab2's COCO branch, `semantic_decoder.SemanticDecoder` (ASPP on
      the backbone's stride-32 STAGE5, fused with RES3 and RES2) and a
      `SemanticHead` with a void logit, C + 1 outputs; the default of
      kmax_deeplab_r50 / kmax_deeplab_axial_r50, whose training-mode
      parameters then equal DeepLab2's.
  'pixel_decoder': a `SemanticHead` (C outputs) on the pixel decoder's
      stride-4 output, as CMT-DeepLab's; kmax_tiny's default (a fraction of
      the ASPP's parameters and multiply-adds, whose rates 6 / 12 / 18 at
      stride 32 reach past the small crops of the CPU tests and sweeps).

Attributes `backbone`, `pixel_decoder`, `transformer`, `heads`,
`semantic_decoder` (None for 'pixel_decoder') and `semantic_head` split the
parameters as `parameter_count` counts them (the per-layer predictors belong
to `transformer`).

[1] k-means Mask Transformer, Yu et al., ECCV 2022.
"""

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import gin_checks
from cmt_deeplab_tf.modeling import mask_transformer_model
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import kmax_pixel_decoder
from cmt_deeplab_tf.modeling.decoders import kmax_transformer_decoder
from cmt_deeplab_tf.modeling.decoders import semantic_decoder as semantic_decoder_lib
from cmt_deeplab_tf.modeling.heads import mask_transformer_heads
from cmt_deeplab_tf.modeling.heads import semantic_head as semantic_head_lib
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import kmeans_attention
from cmt_deeplab_tf.modeling.layers import resize
from cmt_deeplab_tf.modeling.layers import stems

OUTPUT_STRIDE = 32
# The semantic branches (see the module docstring).
ASPP = 'aspp'
PIXEL_DECODER = 'pixel_decoder'
SEMANTIC_HEADS = (ASPP, PIXEL_DECODER)
# DeepLab2's COCO semantic decoder (kmax_meta_*.textproto): ASPP and fusion
# widths, the RES3 and RES2 projections, the head's hidden width.
_ASPP_CHANNELS = 256
_DECODER_CHANNELS = 256
_LOW_LEVEL_CHANNELS = (64, 32)
_SEMANTIC_HEAD_CHANNELS = 256


class KMaXDeepLab(mask_transformer_model.MaskTransformerModel):
  """Backbone + kMaX pixel decoder + k-means transformer decoder + heads."""

  def __init__(self, backbone, pixel_decoder, transformer, heads,
               semantic_head=None, semantic_decoder=None, name='kmax_deeplab'):
    """Initializes the model.

    Args:
      backbone: An `AxialResNet` with output stride 32.
      pixel_decoder: A `KMaXPixelDecoder` with 4 stages (to stride 4).
      transformer: A `KMaXTransformerDecoder`.
      heads: The final `MaskTransformerHeads` (with center projections).
      semantic_head: Optional training-only `SemanticHead`.
      semantic_decoder: Optional training-only `SemanticDecoder` that feeds
        `semantic_head` from the backbone; without it the head reads the
        pixel decoder's stride-4 output.
      name: The model name.

    Raises:
      ValueError: If the decoder does not end at stride 4.
    """
    if pixel_decoder.strides[-1] != 4:
      raise ValueError('KMaXDeepLab needs a pixel decoder ending at stride 4 '
                       f'(the mask resolution), got strides '
                       f'{pixel_decoder.strides}.')
    if semantic_decoder is not None and semantic_head is None:
      raise ValueError('KMaXDeepLab: a semantic_decoder needs a semantic_head.')
    super().__init__(backbone, pixel_decoder, transformer, heads,
                     semantic_head=semantic_head, name=name)
    self.semantic_decoder = semantic_decoder

  def call(self, images, training=None, return_visualization=False):
    """Runs the model.

    Args:
      images: float32 [B, H, W, 3] in [-1, 1], any size.
      training: Training mode (batch norms, drop path, deep supervision,
        semantic head).
      return_visualization: Also return CLUSTERING_MAPS, each layer's hard
        k-means assignment [B, h_s, w_s, N], and ATTENTION_MAPS (empty: kMaX
        has no spatial softmax).

    Returns:
      The output dict of `common`: CLASS_LOGITS [B, N, C + 1], MASK_LOGITS
      [B, h, w, N], PIXEL_EMBEDDINGS [B, h, w, D] (h = ceil(H / 4)); in
      training AUX_OUTPUTS (one dict per k-means layer: CLASS_LOGITS and
      MASK_LOGITS resized to [B, h, w, N]) and SEMANTIC_LOGITS [B, h, w, C]
      ([B, h, w, C + 1], void last, with the 'aspp' branch).
    """
    outputs, layer_predictions = self.forward(images, training=training)
    if training:
      height, width = resize.spatial_size(outputs[common.MASK_LOGITS])
      outputs[common.AUX_OUTPUTS] = [{
          common.CLASS_LOGITS: p[common.CLASS_LOGITS],
          common.MASK_LOGITS: resize.resize_align_corners(
              p[common.MASK_LOGITS], height, width)}
                                     for p in layer_predictions]
    if return_visualization:
      outputs[common.CLUSTERING_MAPS] = [
          kmeans_attention.kmeans_assignment(p[common.MASK_LOGITS])
          for p in layer_predictions]
      outputs[common.ATTENTION_MAPS] = []
    return outputs

  def forward(self, images, training=None, with_semantic=None):
    """Runs the model; also returns each layer's prediction at its stride.

    Args:
      images: As `call`.
      training: As `call`.
      with_semantic: Whether the semantic branch runs (in the mode `training`
        says); default: `training`.

    Returns:
      outputs: CLASS_LOGITS, MASK_LOGITS, PIXEL_EMBEDDINGS and, with the
        semantic branch, SEMANTIC_LOGITS.
      layer_predictions: per k-means layer, CLASS_LOGITS, MASK_LOGITS
        [B, h_s, w_s, N] and PIXEL_EMBEDDINGS at the layer's stride s.
    """
    endpoints = self.backbone(images, training=training)
    features = self.pixel_decoder(endpoints, training=training)
    centers, layer_predictions = self.transformer(features[:-1],
                                                  training=training)
    embeddings = self.heads.pixel_embedding_head(features[-1], training=training)
    outputs = self.heads(embeddings, centers, training=training)
    outputs[common.PIXEL_EMBEDDINGS] = embeddings
    if with_semantic is None:
      with_semantic = training
    if with_semantic and self.semantic_head is not None:
      semantic_features = features[-1] if self.semantic_decoder is None else (
          self.semantic_decoder(endpoints, training=training))
      outputs[common.SEMANTIC_LOGITS] = self.semantic_head(semantic_features,
                                                           training=training)
    return outputs, layer_predictions


def build_network(backbone, num_classes, num_clusters, width_multiplier=1.0,
                  decoder_blocks=kmax_pixel_decoder.COCO_BLOCKS,
                  transformer_blocks=(2, 2, 2), num_heads=8,
                  transformer_filters=None, semantic_head=ASPP,
                  name='kmax_deeplab'):
  """Assembles a `KMaXDeepLab` with DeepLab2's widths times `width_multiplier`.

  Args:
    backbone: An `AxialResNet` with output stride 32.
    num_classes: Number of classes C.
    num_clusters: Number of cluster centers N (COCO: 128).
    width_multiplier: Scales every width with DeepLab2's rounding
      int(round(c * w)): decoder stages (512, 256, 128, 64 base filters),
      centers (256), transformer filters (128), FFN (2048), pixel heads (256),
      embeddings (128).
    decoder_blocks: Pixel-decoder blocks at strides 32, 16, 8, 4.
    transformer_blocks: k-means layers at strides 32, 16, 8.
    num_heads: Heads of the center self-attention.
    transformer_filters: The k-means layers' base width; default
      width(128). DeepLab2's reduced-width test fixtures scale it apart
      (the heads need filters divisible by `num_heads`).
    semantic_head: The training-only semantic branch, one of
      `SEMANTIC_HEADS`: 'aspp' (DeepLab2's: ASPP decoder widths 256, RES3 /
      RES2 projections 64 / 32, head 256, times the width multiplier) or
      'pixel_decoder'.
    name: The model name.

  Returns:
    A `KMaXDeepLab`.

  Raises:
    ValueError: On an unknown `semantic_head`.
  """
  if semantic_head not in SEMANTIC_HEADS:
    raise ValueError(f'Unknown kMaX semantic_head={semantic_head!r}; expected '
                     f'one of {SEMANTIC_HEADS}.')
  def width(channels):
    return int(round(channels * width_multiplier))
  decoder = kmax_pixel_decoder.KMaXPixelDecoder(
      filters=[width(f) for f in kmax_pixel_decoder.COCO_FILTERS],
      num_blocks=decoder_blocks)
  transformer = kmax_transformer_decoder.KMaXTransformerDecoder(
      num_classes, num_clusters, num_blocks=transformer_blocks,
      center_channels=width(256),
      filters=transformer_filters or width(128), num_heads=num_heads,
      feed_forward_channels=width(2048), embedding_channels=width(128),
      head_channels=width(256))
  heads = mask_transformer_heads.MaskTransformerHeads(
      num_classes, embedding_channels=width(128), head_channels=width(256),
      center_feature_channels=width(256), activation=activations.GELU)
  semantic_decoder = None
  if semantic_head == ASPP:
    semantic_decoder = semantic_decoder_lib.SemanticDecoder(
        aspp_channels=width(_ASPP_CHANNELS),
        decoder_channels=width(_DECODER_CHANNELS),
        low_level_channels=[width(c) for c in _LOW_LEVEL_CHANNELS],
        activation=activations.GELU)
  head = semantic_head_lib.SemanticHead(
      num_classes, head_channels=width(_SEMANTIC_HEAD_CHANNELS),
      activation=activations.GELU, void_logit=semantic_head == ASPP)
  return KMaXDeepLab(backbone, decoder, transformer, heads,
                     semantic_head=head, semantic_decoder=semantic_decoder,
                     name=name)


def _backbone(factory, config_name, **kwargs):
  """A backbone with the named config's settings; binding them is an error."""
  gin_checks.reject_bindings('AxialResNet', kwargs, config_name)
  return factory(**kwargs)


def kmax_deeplab_r50(num_classes, num_clusters, width_multiplier=1.0,
                     semantic_head=ASPP):
  """kMaX-DeepLab with ResNet-50 (7x7 stem, ReLU), DeepLab2's `kmax_resnet50`."""
  backbone = _backbone(
      axial_resnet.resnet50, "build_model(name='kmax_deeplab_r50')",
      width_multiplier=width_multiplier, stem_type=stems.RESNET,
      output_stride=OUTPUT_STRIDE)
  return build_network(backbone, num_classes, num_clusters, width_multiplier,
                       semantic_head=semantic_head, name='kmax_deeplab_r50')


def kmax_deeplab_axial_r50(num_classes, num_clusters, width_multiplier=1.0,
                           semantic_head=ASPP):
  """kMaX-DeepLab with Axial-ResNet-50 (GeLU), DeepLab2's `kmax_axial_resnet50`.

  The backbone of `maxs_gelu_imagenet_22k_1k_224`; its drop path (DeepLab2
  COCO textproto: keep probability 0.8, linear schedule) is the
  `AxialResNet` default.
  """
  backbone = _backbone(
      axial_resnet.axial_r50, "build_model(name='kmax_deeplab_axial_r50')",
      width_multiplier=width_multiplier, activation=activations.GELU,
      output_stride=OUTPUT_STRIDE)
  return build_network(backbone, num_classes, num_clusters, width_multiplier,
                       semantic_head=semantic_head,
                       name='kmax_deeplab_axial_r50')


_TINY_WIDTH = 0.125
_TINY_HEADS = 2


def kmax_tiny(num_classes, num_clusters, width_multiplier=1.0,
              semantic_head=PIXEL_DECODER):
  """A small kMaX-DeepLab for CPU tests, the demo and sweeps.

  A 1-1-1-1 GeLU Axial-ResNet, one block per decoder stage and one k-means
  layer per stride, every width 1/8 of kMaX-DeepLab's times
  `width_multiplier`.
  """
  width = _TINY_WIDTH * width_multiplier
  backbone = _backbone(
      axial_resnet.AxialResNet, "build_model(name='kmax_tiny')",
      num_blocks=(1, 1, 1, 1), width_multiplier=width,
      activation=activations.GELU, output_stride=OUTPUT_STRIDE,
      drop_path_rate=0.0, name='tiny_axial_resnet')
  return build_network(backbone, num_classes, num_clusters, width,
                       decoder_blocks=(1, 1, 1, 1),
                       transformer_blocks=(1, 1, 1), num_heads=_TINY_HEADS,
                       semantic_head=semantic_head, name='kmax_tiny')
