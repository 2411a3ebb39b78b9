"""The stack of transformer layers that updates the cluster centers.

The layers are placed after residual blocks of the pixel path (dual-path design of
MaX-DeepLab [1]): each is keyed by a location string `block_location(path, stage,
block)`; the model's forward loop asks `layer_after(path, stage, block)` after
every block of the pixel decoder (and of MaX-S's backbone) and runs the layer it
gets (`cmt_deeplab.CMTDeepLab.forward`). The cluster centers start from a learnt
embedding (MaX-DeepLab's memory, truncated normal, std 1) and flow through the
layers in order, together with the assignment logits of the CMT residual path
[2].

[1] MaX-DeepLab: End-to-End Panoptic Segmentation with Mask Transformers,
    Wang et al., CVPR 2021.
[2] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
"""
import dataclasses
from typing import Optional, Tuple

import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling import gin_checks
from cmt_deeplab_tf.modeling.decoders import pixel_decoder
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from cmt_deeplab_tf.modeling.layers import cmt_implementations

DECODER = 'decoder'
BACKBONE = 'backbone'


def block_location(path, stage, block):
  """The key of the layer after block `block` of stage `stage` of `path`."""
  return f'{path}_stage{stage}_block{block}'


def all_block_locations(path, num_blocks, stages=None):
  """Locations after every block of the given stages (default: all)."""
  stages = range(len(num_blocks)) if stages is None else stages
  return [block_location(path, stage, block)
          for stage in stages for block in range(num_blocks[stage])]


def decoder_block_strides(num_blocks, stages=None):
  """The pixel stride at each location of `all_block_locations(DECODER, ...)`."""
  stages = range(len(num_blocks)) if stages is None else stages
  return [pixel_decoder.STRIDES[stage]
          for stage in stages for _ in range(num_blocks[stage])]


# Set by `cmt_deeplab.build_network` (one place per knob): binding them is a
# parse-time error.
_SET_BY_BUILD_NETWORK = ('locations', 'location_strides', 'num_clusters',
                         'center_channels', 'filters', 'num_heads',
                         'feed_forward_channels', 'dual_path',
                         'learn_initial_centers')


@gin.configurable('TransformerDecoder', denylist=_SET_BY_BUILD_NETWORK)
@dataclasses.dataclass(frozen=True)
class DecoderOptions:
  """The options of a `TransformerDecoder` (gin: `TransformerDecoder.<option>`).

  Attributes:
    locations: Keys (see `block_location`) of the blocks followed by a layer,
      in execution order.
    location_strides: Output stride of the pixel features at each location
      (default: 16 everywhere).
    num_clusters: Number of cluster centers N (mask slots).
    center_channels: Width of the centers (MaX-DeepLab memory: 256).
    filters: Base width of the layers at stride 16 (see `ct.LayerOptions`).
    scale_filters_with_stride: Scale a layer's width with its pixel stride
      (filters * stride / 16: 64 at stride 8, 32 at stride 4), as DeepLab2's
      `transformer_expansion` for low-level features; the FFN and the
      256-wide centers are unchanged.
    num_heads: Attention heads of the layers at stride 16.
    scale_heads_with_stride: Scale the heads with the pixel stride too
      (num_heads * stride / 16: 4 at stride 8, 2 at stride 4), so that with
      `scale_filters_with_stride` every head keeps the stride-16 width
      (filters / num_heads key channels). Parameters and multiply-adds are
      unchanged; the [B, heads, HW, N] attention maps at strides 8 and 4 get
      2x and 4x smaller. False: `num_heads` at every stride.
    feed_forward_channels: Hidden width of the center FFN.
    dual_path: Build MaX-DeepLab dual-path layers (`ct.DUAL_PATH_SWITCHES`;
      a gin binding of one of those options is then an error) instead of CMT
      layers configured by gin / their defaults.
    learn_initial_centers: Own the initial center embedding. False for RFN's
      second network, which continues from the first network's centers.
    drop_path_rate: Drop-path rate of the layers' residual branches.
    implementation: The name of the layers' implementation in
      `cmt_implementations`: 'fused' (the fast one) or 'plain' (the equations
      as written); same variables, same outputs.
  """
  locations: Tuple[str, ...]
  location_strides: Optional[Tuple[int, ...]] = None
  num_clusters: int = 128
  center_channels: int = 256
  filters: int = 128
  scale_filters_with_stride: bool = True
  num_heads: int = 8
  scale_heads_with_stride: bool = True
  feed_forward_channels: int = 2048
  dual_path: bool = False
  learn_initial_centers: bool = True
  drop_path_rate: float = 0.0
  implementation: str = cmt_implementations.FUSED

  def __post_init__(self):
    """Checks the options.

    Raises:
      ValueError: On empty or repeated locations, one stride per location
        missing, a non-positive `num_clusters` or an unknown
        `implementation`.
    """
    locations = tuple(self.locations)
    if not locations or len(set(locations)) != len(locations):
      raise ValueError('TransformerDecoder locations must be non-empty and '
                       f'unique, got locations={list(locations)}.')
    strides = tuple(self.location_strides or (16,) * len(locations))
    if len(strides) != len(locations):
      raise ValueError(f'location_strides={list(strides)} must give one '
                       f'stride per location ({len(locations)}).')
    if self.num_clusters < 1:
      raise ValueError(
          f'num_clusters must be positive, got {self.num_clusters}.')
    cmt_implementations.get(self.implementation)
    object.__setattr__(self, 'locations', locations)
    object.__setattr__(self, 'location_strides', strides)

  def layer_heads(self, stride):
    """Attention heads of a layer at pixel stride `stride`."""
    if not self.scale_heads_with_stride:
      return self.num_heads
    return max(int(round(self.num_heads * stride / 16)), 1)

  def layer_filters(self, stride):
    """Base width of a layer at pixel stride `stride`."""
    if not self.scale_filters_with_stride:
      return self.filters
    return max(int(round(self.filters * stride / 16)),
               self.layer_heads(stride))

  def layer_options(self, stride):
    """The `ct.LayerOptions` of the layer at `stride` (gin fills the rest).

    Raises:
      ValueError: For dual-path layers, if gin binds one of
        `ct.DUAL_PATH_SWITCHES` to another value.
    """
    switches = {}
    if self.dual_path:
      gin_checks.reject_bindings('ClusteringTransformerLayer',
                                 ct.DUAL_PATH_SWITCHES,
                                 'TransformerDecoder(dual_path=True)')
      switches = ct.DUAL_PATH_SWITCHES
    return ct.LayerOptions(
        filters=self.layer_filters(stride),
        center_channels=self.center_channels,
        num_heads=self.layer_heads(stride),
        feed_forward_channels=self.feed_forward_channels,
        drop_path_rate=self.drop_path_rate, **switches)


class TransformerDecoder(tf_keras.layers.Layer):
  """Cluster-center embedding + CMT (or MaX dual-path) layers by location."""

  def __init__(self, options, name='transformer'):
    """Initializes the stack.

    Args:
      options: A `DecoderOptions`.
      name: The layer name.
    """
    super().__init__(name=name)
    self.options = options
    self.num_clusters = options.num_clusters
    self.center_channels = options.center_channels
    self.locations = list(options.locations)
    self._strides = dict(zip(options.locations, options.location_strides))
    implementation = cmt_implementations.get(options.implementation)
    self.transformer_layers = {
        location: ct.ClusteringTransformerLayer(
            options.layer_options(stride), implementation, name=location)
        for location, stride in zip(options.locations,
                                    options.location_strides)}
    self._initial_centers = None
    if options.learn_initial_centers:
      self._initial_centers = self.add_weight(
          name='initial_centers',
          shape=[options.num_clusters, options.center_channels],
          initializer=tf_keras.initializers.TruncatedNormal(stddev=1.0),
          trainable=True)

  @property
  def has_initial_centers(self):
    return self._initial_centers is not None

  def initial_centers(self, batch_size):
    """The learnt centers tiled to [batch_size, N, Cc]."""
    if self._initial_centers is None:
      raise ValueError('This TransformerDecoder was built with '
                       'learn_initial_centers=False; pass centers explicitly.')
    centers = tf.cast(self._initial_centers, self.compute_dtype)
    return tf.tile(centers[tf.newaxis], [batch_size, 1, 1])

  def layer_after(self, path, stage, block):
    """The layer after block `block` of stage `stage` of `path`, or None."""
    return self.transformer_layers.get(block_location(path, stage, block))

  def stride_of(self, layer):
    """The pixel stride of the features `layer` runs on."""
    return self._strides[layer.name]
