"""The mask-transformer panoptic model: CMT-DeepLab (and MaX-DeepLab-S).

images -> backbone -> pixel decoder (stride 16 -> 8 -> 4) with transformer layers
after its blocks (CMT layers [1]; MaX-S also has dual-path layers inside its
backbone [2]) -> heads on the final cluster centers and stride-4 pixel
embeddings. Every transformer layer but the last also gets a prediction (deep
supervision) from the same heads.

`CMTDeepLab.forward` is the whole forward pass as one loop over the stages of
the backbone and of the pixel decoder: each block, then the transformer layer
after it, if any, which takes and returns the pixels, the cluster centers and
the assignment logits:

    pixels = block(features)
    pixels, centers, assignment = layer(pixels, centers, assignment)
    features = activation(pixels)

Each layer's outputs (centers for deep supervision, reference masks,
visualisation maps) are collected in a list in that loop. The loop runs each
part within its name scope, so the variables keep the names they get when the
backbone or the decoder runs alone. The memory policy `recompute_parts` (set by
`builder.build_model(recompute=...)`, kinds of `recompute_policy`) says which
parts the backward pass of training recomputes; the loop applies it.

The parts (`backbone`, `pixel_decoder`, `transformer`, `heads`, the
training-only `semantic_head`) are those of every model of the family
(`mask_transformer_model`).

[1] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
[2] MaX-DeepLab: End-to-End Panoptic Segmentation with Mask Transformers,
    Wang et al., CVPR 2021.
"""
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import mask_transformer_model
from cmt_deeplab_tf.modeling import recompute_policy
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import pixel_decoder as pixel_decoder_lib
from cmt_deeplab_tf.modeling.decoders import transformer_decoder
from cmt_deeplab_tf.modeling.heads import mask_transformer_heads
from cmt_deeplab_tf.modeling.heads import semantic_head as semantic_head_lib
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from cmt_deeplab_tf.modeling.layers import recompute as recompute_lib


def _add_reference_mask(outputs, layer_outputs):
  """Adds the layer's REFERENCE_MASK_PARAMETERS to `outputs`, if it has any."""
  if ct.REFERENCE_PARAMETERS in layer_outputs:
    outputs[common.REFERENCE_MASK_PARAMETERS] = layer_outputs[
        ct.REFERENCE_PARAMETERS]


class CMTDeepLab(mask_transformer_model.MaskTransformerModel):
  """Backbone + pixel decoder + transformer layers + heads."""

  def __init__(self, backbone, pixel_decoder, transformer, heads,
               semantic_head=None, name='cmt_deeplab'):
    """Initializes the model.

    Args:
      backbone: An `AxialResNet` (endpoints RES2, RES3, RES5).
      pixel_decoder: A `PixelDecoder`.
      transformer: A `TransformerDecoder` whose layer locations are blocks of
        the pixel decoder (and of the backbone).
      heads: A `MaskTransformerHeads`.
      semantic_head: Optional training-only `SemanticHead`.
      name: The model name.
    """
    super().__init__(backbone, pixel_decoder, transformer, heads,
                     semantic_head=semantic_head, name=name)
    # Part kinds (`recompute_policy`) recomputed in the backward pass of
    # training; read when a step is traced. `builder.set_recompute` sets it.
    self.recompute_parts = frozenset()

  @property
  def recompute_kinds(self):
    """The part kinds (`recompute_policy.KINDS`, in that order) of this network's
    forward loop: the stem, each backbone and decoder stage, the strides its
    transformer layers run at (MaX-S's: 16 only), and the heads."""
    present = {recompute_policy.STEM, recompute_policy.HEADS}
    present.update(recompute_policy.backbone_stage(axial_resnet.FIRST_STAGE + index)
                   for index in range(len(self.backbone.stages)))
    present.update(recompute_policy.pixel_decoder_stage(stride)
                   for stride in pixel_decoder_lib.STRIDES)
    present.update(recompute_policy.transformer(self.transformer.stride_of(layer))
                   for layer in self.transformer.transformer_layers.values())
    return tuple(kind for kind in recompute_policy.KINDS if kind in present)

  def call(self, images, training=None, return_visualization=False):
    """Runs the model.

    Args:
      images: float32 [B, H, W, 3] in [-1, 1], any size.
      training: Training mode (batch norms, drop path, semantic head).
      return_visualization: Also return CLUSTERING_MAPS / ATTENTION_MAPS (the
        rest of the graph is unchanged).

    Returns:
      The output dict of `common` (see `forward`).
    """
    outputs, _, _ = self.forward(images, training=training,
                                 return_visualization=return_visualization)
    return outputs

  def forward(self, images, training=None, return_visualization=False,
              centers=None, res2_fusion=None):
    """Runs the model and also returns what RFN chains between networks.

    Args:
      images: float32 [B, H, W, 3].
      training: Training mode.
      return_visualization: Also return the per-layer maps.
      centers: Optional [B, N, Cc] centers to start from (RFN); by default the
        transformer's learnt initial centers.
      res2_fusion: Optional [B, h, w, 256w] features averaged into the
        backbone's (unactivated) stride-4 features before stage 3 (RFN's
        second network, supplement §1).

    Returns:
      outputs: dict with CLASS_LOGITS [B, N, C + 1], MASK_LOGITS [B, h, w, N],
        PIXEL_EMBEDDINGS [B, h, w, D], in training only
        REFERENCE_MASK_PARAMETERS [B, N, 5] (CMT layers with reference masks,
        for the mask-approximation loss, which draws the masks it
        supervises), AUX_OUTPUTS (one dict per layer but the last, for
        deep supervision) and SEMANTIC_LOGITS [B, h, w, C], and with
        `return_visualization` CLUSTERING_MAPS / ATTENTION_MAPS (lists of
        [B, h', w', N] per layer that computes them). h = ceil(H / 4).
      centers: The final [B, N, Cc] cluster centers.
      features: The stride-4 decoder features [B, h, w, 256w].
    """
    if centers is None:
      centers = self.transformer.initial_centers(tf.shape(images)[0])
    assignment = None  # The last layer's assignment logits (CMT residual path).
    layer_outputs = []  # Every transformer layer's output dict, in order.
    backbone, decoder = self.backbone, self.pixel_decoder

    with tf.name_scope(backbone.name):  # Stem, stages 2-5 (endpoints RES2..5).
      features = self._run(recompute_policy.STEM, backbone.stem, images,
                           training)
      endpoints = {}
      for stage_index, stage in enumerate(backbone.stages):
        kind = recompute_policy.backbone_stage(axial_resnet.FIRST_STAGE +
                                               stage_index)
        for block_index, block in enumerate(stage):
          pixels = self._run(kind, block, features, training,
                             activate_output=False)
          layer = self.transformer.layer_after(transformer_decoder.BACKBONE,
                                               stage_index, block_index)
          if layer is not None:  # MaX-S's stage-5 dual-path layers.
            pixels, centers, assignment = self._transformer_layer(
                layer, pixels, centers, assignment, layer_outputs, training,
                return_visualization)
          features = backbone.activation(pixels)
        if stage_index == 0 and res2_fusion is not None:  # RFN.
          pixels = 0.5 * (pixels + tf.cast(res2_fusion, pixels.dtype))
          features = backbone.activation(pixels)
        endpoints[axial_resnet.PREACTIVATIONS[stage_index]] = pixels
        endpoints[axial_resnet.ENDPOINTS[stage_index]] = features

    with tf.name_scope(decoder.name):  # Strides 16, 8, 4.
      for stage_index, stage in enumerate(decoder.stages):
        features = decoder.enter_stage(stage_index, features, pixels,
                                       endpoints, training=training)
        kind = recompute_policy.pixel_decoder_stage(
            pixel_decoder_lib.STRIDES[stage_index])
        for block_index, block in enumerate(stage):
          pixels = self._run(kind, block, features, training,
                             activate_output=False)
          layer = self.transformer.layer_after(transformer_decoder.DECODER,
                                               stage_index, block_index)
          if layer is not None:
            pixels, centers, assignment = self._transformer_layer(
                layer, pixels, centers, assignment, layer_outputs, training,
                return_visualization)
          features = tf.nn.relu(pixels)

    outputs = self._predict(features, centers, layer_outputs, training)
    if return_visualization:
      outputs[common.CLUSTERING_MAPS] = [
          o[ct.CLUSTERING_MAP] for o in layer_outputs if ct.CLUSTERING_MAP in o]
      outputs[common.ATTENTION_MAPS] = [
          o[ct.ATTENTION_MAP] for o in layer_outputs if ct.ATTENTION_MAP in o]
    return outputs, centers, features

  def _transformer_layer(self, layer, pixels, centers, assignment,
                         layer_outputs, training, return_maps):
    """Runs one transformer layer; appends its output dict to `layer_outputs`.

    Returns:
      The updated (unactivated) pixels, the centers and the assignment logits
      (the previous ones if the layer computes none).
    """
    outputs = self._run(
        recompute_policy.transformer(self.transformer.stride_of(layer)),
        layer, [pixels, centers, assignment], training,
        return_maps=return_maps)
    layer_outputs.append(outputs)
    return (outputs[ct.PIXELS], outputs[ct.CENTERS],
            outputs.get(ct.ASSIGNMENT_LOGITS, assignment))

  def _run(self, kind, layer, inputs, training, **kwargs):
    """layer(*inputs, training=training, **kwargs), recomputed in the backward
    pass of training if the memory policy lists `kind`."""
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return recompute_lib.recompute(
        lambda *x: layer(*x, training=training, **kwargs), inputs,
        enabled=training is True and kind in self.recompute_parts,
        layer=layer)

  def _predict(self, features, centers, layer_outputs, training):
    """Heads on the final and on every intermediate layer's centers."""
    heads = self.heads
    embeddings = self._run(recompute_policy.HEADS, heads.pixel_embedding_head,
                           features, training)

    def predict(layer_centers):
      return self._run(recompute_policy.HEADS, heads,
                       [embeddings, layer_centers], training)
    outputs = predict(centers)
    outputs[common.PIXEL_EMBEDDINGS] = embeddings
    if not training:  # Reference masks, deep supervision and the semantic head
      return outputs  # only train the model.
    _add_reference_mask(outputs, layer_outputs[-1])
    aux_outputs = []
    for layer_output in layer_outputs[:-1]:
      aux = predict(layer_output[ct.CENTERS])
      _add_reference_mask(aux, layer_output)
      aux_outputs.append(aux)
    outputs[common.AUX_OUTPUTS] = aux_outputs
    if self.semantic_head is not None:
      outputs[common.SEMANTIC_LOGITS] = self.semantic_head(features, training=training)
    return outputs


def build_network(backbone, num_classes, num_clusters, decoder_blocks,
                  transformer_locations=None, location_strides=None,
                  dual_path=False, width_multiplier=1.0, transformer_filters=None,
                  memory_channels=None, feed_forward_channels=None,
                  head_feature_channels=None, num_heads=8,
                  learn_initial_centers=True, name='cmt_deeplab'):
  """Assembles a `CMTDeepLab` from a backbone and MaX-DeepLab-S widths.

  Args:
    backbone: An `AxialResNet` (endpoints RES2, RES3, RES5).
    num_classes: Number of classes C.
    num_clusters: Number of cluster centers N.
    decoder_blocks: Pixel-decoder blocks at strides 16, 8, 4.
    transformer_locations: Blocks followed by a transformer layer; by default
      every pixel-decoder block (CMT-DeepLab).
    location_strides: Pixel stride at each location (it scales the layer's
      widths and heads, see `TransformerDecoder`); by default derived for the
      default locations, 16 for given ones.
    dual_path: MaX-DeepLab dual-path layers instead of CMT layers.
    width_multiplier: Scales decoder, center, feed-forward and head widths
      with DeepLab2's rounding int(round(c * w)) (256-wide centers, FFN 2048,
      pixel head 256, 128-wide embeddings at 1.0).
    transformer_filters: Base width of the transformer layers at stride 16
      (bottleneck 2x, keys 1x, values 2x this); default 128 * width_multiplier.
      DeepLab2 keeps it at 128 whatever its width multiplier
      (`128 * transformer_expansion`), as the named configs do.
    memory_channels: Width of the cluster centers; default 256 *
      width_multiplier (DeepLab2's `memory_channels`).
    feed_forward_channels: Hidden width of the center FFN; default 2048 *
      width_multiplier (DeepLab2's dual-path `feed_forward_network_channels`).
    head_feature_channels: Width of the class and mask center projections;
      default 256 * width_multiplier (DeepLab2's
      `global_feed_forward_network_channels`).
    num_heads: Attention heads of the transformer layers.
    learn_initial_centers: False for RFN's second network.
    name: The model name.

  Returns:
    A `CMTDeepLab` model.
  """
  def width(channels, given=None):
    return int(round(channels * width_multiplier)) if given is None else given
  if transformer_locations is None:
    transformer_locations = transformer_decoder.all_block_locations(
        transformer_decoder.DECODER, decoder_blocks)
    if location_strides is None:
      location_strides = transformer_decoder.decoder_block_strides(
          decoder_blocks)
  decoder = pixel_decoder_lib.PixelDecoder(
      num_blocks=decoder_blocks, width_multiplier=width_multiplier)
  transformer = transformer_decoder.TransformerDecoder(
      transformer_decoder.DecoderOptions(
          locations=tuple(transformer_locations),
          location_strides=(None if location_strides is None else
                            tuple(location_strides)),
          num_clusters=num_clusters,
          center_channels=width(256, memory_channels),
          filters=width(128, transformer_filters), num_heads=num_heads,
          feed_forward_channels=width(2048, feed_forward_channels),
          dual_path=dual_path, learn_initial_centers=learn_initial_centers))
  heads = mask_transformer_heads.MaskTransformerHeads(
      num_classes, embedding_channels=width(128), head_channels=width(256),
      center_feature_channels=width(256, head_feature_channels))
  semantic_head = semantic_head_lib.SemanticHead(num_classes,
                                                 head_channels=width(256))
  return CMTDeepLab(backbone, decoder, transformer, heads,
                    semantic_head=semantic_head, name=name)
