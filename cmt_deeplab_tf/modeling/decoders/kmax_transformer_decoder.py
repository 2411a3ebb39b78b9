"""The kMaX-DeepLab transformer decoder: k-means layers over strides 32, 16, 8.

As DeepLab2's `KMaXTransformerDecoder` (kMaX-DeepLab [1], Fig. 2): learnt
cluster centers (truncated normal, std 1) pass through `num_blocks[i]`
`KMaXTransformerLayer`s on the pixel decoder's output at stride 32 / 16 / 8
(COCO: 2, 2, 2), coarse to fine. Each layer has its own predictor (DeepLab2's
auxiliary predictor) whose mask logits drive its k-means assignment; its
predictions are the deep supervision of the model.

[1] k-means Mask Transformer, Yu et al., ECCV 2022.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.heads import mask_transformer_heads
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import kmeans_attention

STRIDES = (32, 16, 8)


@gin.configurable(allowlist=['drop_path_rate'])
class KMaXTransformerDecoder(tf_keras.layers.Layer):
  """Initial centers and the k-means layers, in execution order."""

  def __init__(self, num_classes, num_clusters=128, num_blocks=(2, 2, 2),
               center_channels=256, filters=128, num_heads=8,
               feed_forward_channels=2048, embedding_channels=128,
               head_channels=256, drop_path_rate=0.2,
               activation=activations.GELU, name='kmax_transformer_decoder'):
    """Initializes the decoder.

    Args:
      num_classes: Number of classes C of the per-layer predictors.
      num_clusters: Number of cluster centers N (COCO: 128, Cityscapes: 256).
      num_blocks: Layers at strides 32, 16 and 8.
      center_channels: Width of the centers (256).
      filters: Base width of the layers (see `KMaXTransformerLayer`; 128).
      num_heads: Heads of the center self-attention (8).
      feed_forward_channels: Hidden width of the center FFN (2048).
      embedding_channels: Pixel / mask embedding width of the predictors (128).
      head_channels: Hidden width of the predictors' pixel head (256).
      drop_path_rate: Drop-path rate of the layers' residual branches
        (DeepLab2's COCO and Cityscapes kMaX: 0.2); the gin switch
        `KMaXTransformerDecoder.drop_path_rate`.
      activation: 'gelu' (kMaX-DeepLab) or 'relu'.
      name: The layer name.

    Raises:
      ValueError: On a bad `num_blocks` or `num_clusters`.
    """
    num_blocks = tuple(num_blocks)
    if len(num_blocks) != len(STRIDES) or any(n < 0 for n in num_blocks) or (
        not sum(num_blocks)):
      raise ValueError('KMaXTransformerDecoder num_blocks must be 3 counts '
                       '(strides 32, 16, 8), not all zero, got '
                       f'num_blocks={num_blocks}.')
    if num_clusters < 1:
      raise ValueError(f'num_clusters must be positive, got {num_clusters}.')
    super().__init__(name=name)
    self.num_clusters = num_clusters
    self.num_blocks = num_blocks
    # The index into STRIDES of the features each layer reads.
    self.layer_inputs = [index for index, count in enumerate(num_blocks)
                         for _ in range(count)]
    self.transformer_layers = []
    for index, stage in enumerate(self.layer_inputs):
      block = index - self.layer_inputs.index(stage)
      predictor = mask_transformer_heads.MaskTransformerHeads(
          num_classes, embedding_channels=embedding_channels,
          head_channels=head_channels, center_feature_channels=None,
          activation=activation, name='predictor')
      self.transformer_layers.append(kmeans_attention.KMaXTransformerLayer(
          predictor, filters=filters, center_channels=center_channels,
          num_heads=num_heads, feed_forward_channels=feed_forward_channels,
          drop_path_rate=drop_path_rate, activation=activation,
          name=f'stride{STRIDES[stage]}_layer{block + 1}'))
    self.initial_centers = self.add_weight(
        name='initial_centers', shape=[num_clusters, center_channels],
        initializer=tf_keras.initializers.TruncatedNormal(stddev=1.0),
        trainable=True)

  def call(self, features, training=None):
    """Updates the centers layer by layer, coarse to fine.

    Args:
      features: Unactivated pixel features at strides 32, 16, 8:
        [B, h_s, w_s, C_s] each.
      training: Training mode.

    Returns:
      centers: the final [B, N, Cc] cluster centers.
      predictions: one dict per layer, in order (see
        `KMaXTransformerLayer.call`): CLASS_LOGITS, MASK_LOGITS at the
        layer's stride and PIXEL_EMBEDDINGS.
    """
    batch_size = tf.shape(features[0])[0]
    centers = tf.tile(tf.cast(self.initial_centers, self.compute_dtype)[None],
                      [batch_size, 1, 1])
    predictions = []
    for layer, stage in zip(self.transformer_layers, self.layer_inputs):
      centers, prediction = layer(features[stage], centers, training=training)
      predictions.append(prediction)
    return centers, predictions
