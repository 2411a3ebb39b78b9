"""k-means cross-attention and the kMaX-DeepLab transformer layer.

kMaX-DeepLab [1] reads cross-attention as a k-means step (Eq. 5-8 of [1]):

  assignment step  A = one_hot(argmax_N(Q_c K_p^T))      [B, HW, N], hard
  update step      C <- C + A^T V_p                      [B, N, D]

The affinities Q_c K_p^T are the layer's own mask prediction (the cluster
centers dotted with the pixel embeddings of the mask head), so every layer makes
a prediction that deep supervision trains, and the argmax over the N centers
(instead of a softmax over the HW pixels) assigns each pixel to exactly one
center. `kmeans_assignment` and `kmeans_center_update` are the two steps as
plain functions of tensors, usable by any layer that has mask logits and pixel
values.

`KMaXTransformerLayer` is DeepLab2's kMaX decoder layer (`DualPathTransformerLayer`
with only memory self-attention and k-means cross-attention, GeLU): a 1x1
down-projection of pixels and centers, the k-means update and a multi-head
self-attention of the centers added to the centers, then a feed-forward network.
The pixels are not updated.

[1] k-means Mask Transformer, Yu et al., ECCV 2022.
"""
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import attention
from cmt_deeplab_tf.modeling.layers import drop_path
from cmt_deeplab_tf.modeling.layers import linear_bn
from cmt_deeplab_tf.modeling.layers import normalization


def kmeans_assignment(mask_logits):
  """The k-means assignment step: hard one-hot argmax over the cluster centers.

  Args:
    mask_logits: [B, ..., N] pixel-center affinities (mask logits).

  Returns:
    float32 [B, ..., N]: 1 at the center of largest logit of each pixel, 0
    elsewhere (the first such center on ties, as `tf.argmax`). No gradient
    flows through it, as in [1].
  """
  num_clusters = mask_logits.shape[-1]
  assignment = tf.one_hot(tf.argmax(mask_logits, axis=-1), num_clusters,
                          dtype=tf.float32)
  return tf.stop_gradient(assignment)


def kmeans_center_update(pixel_values, assignment):
  """The k-means update step: the sum of the values of each center's pixels.

  Args:
    pixel_values: [B, HW, D] pixel values V_p.
    assignment: [B, HW, N] pixel-center assignment A (`kmeans_assignment`).

  Returns:
    [B, N, D] = A^T V_p, in the dtype of `pixel_values`. DeepLab2 (and this
    layer) normalise it with a batch norm instead of dividing by the cluster
    sizes.
  """
  return tf.einsum('bln,bld->bnd', tf.cast(assignment, pixel_values.dtype),
                   pixel_values)


def kmeans_update(mask_logits, pixel_values, value_norm, projection,
                  training=None):
  """The whole k-means center update: assignment, update, normalisation.

  LinearBN(BN(A^T V_p)) with A = `kmeans_assignment(mask_logits)`, as DeepLab2's
  kMaX layer adds it to the centers. The CMT layer's 'kmeans' center-update
  rule calls it with its own assignment logits.

  Args:
    mask_logits: [B, HW, N] pixel-center affinities.
    pixel_values: [B, HW, D] pixel values V_p.
    value_norm: A batch norm over the D channels of the update.
    projection: A `LinearBN` to the center width Cc (zero-initialised gamma).
    training: Training mode of the norms.

  Returns:
    [B, N, Cc], the residual update of the centers.
  """
  update = kmeans_center_update(pixel_values, kmeans_assignment(mask_logits))
  update = normalization.normalize_last_axis(value_norm, update,
                                             training=training)
  return projection(update, training=training)


class KMaXTransformerLayer(tf_keras.layers.Layer):
  """Centers [B, N, Cc] and pixels [B, h, w, Cp] -> updated centers, prediction."""

  def __init__(self, predictor, filters=128, center_channels=256, num_heads=8,
               feed_forward_channels=2048, drop_path_rate=0.0,
               activation=activations.GELU, name=None):
    """Initializes the layer.

    Args:
      predictor: The layer's own `MaskTransformerHeads` without center
        projections (DeepLab2's auxiliary predictor): its mask logits are the
        assignment affinities and its outputs the layer's deep supervision.
      filters: Base width: pixels and centers are projected to 2 * filters,
        queries / keys have filters and values 2 * filters channels
        (DeepLab2: 128).
      center_channels: Width Cc of the cluster centers (256).
      num_heads: Heads of the center self-attention (8).
      feed_forward_channels: Hidden width of the center FFN (2048).
      drop_path_rate: Drop-path rate of the three residual branches (k-means
        update, self-attention, FFN), drawn independently.
      activation: 'gelu' (kMaX-DeepLab) or 'relu'.
      name: The layer name.
    """
    super().__init__(name=name)
    bottleneck = 2 * filters
    self.filters = filters
    self._activation = activations.get_activation(activation)

    def projection(units, name, use_relu=False, gamma='ones', qkv=False):
      # DeepLab2's transformer initialisation of the query / key / value.
      init = tf_keras.initializers.TruncatedNormal(
          stddev=bottleneck**-0.5) if qkv else 'he_normal'
      return linear_bn.LinearBN(units, use_relu=use_relu, activation=activation,
                                gamma_initializer=gamma,
                                kernel_initializer=init, name=name)
    self.predictor = predictor
    self._pixel_conv1 = projection(bottleneck, 'pixel_conv1_bn_act', True)
    self._center_conv1 = projection(bottleneck, 'center_conv1_bn_act', True)
    self._center_query = projection(filters, 'center_query', qkv=True)
    self._center_key = projection(filters, 'center_key', qkv=True)
    self._center_value = projection(bottleneck, 'center_value', qkv=True)
    self._pixel_value = projection(bottleneck, 'pixel_value', qkv=True)
    self._center_attention = attention.MultiHeadAttention(
        num_heads, attention.SOFTMAX_OVER_KEYS, activation=activation,
        name='center_attention')
    self._center_conv3 = projection(center_channels, 'center_conv3_bn',
                                    gamma='zeros')
    self._kmeans_value_norm = normalization.get_norm_layer(
        name='kmeans_value_batch_norm')
    self._kmeans_conv3 = projection(center_channels, 'kmeans_conv3_bn',
                                    gamma='zeros')
    self._ffn_conv1 = projection(feed_forward_channels, 'ffn_conv1_bn_act', True)
    self._ffn_conv2 = projection(center_channels, 'ffn_conv2_bn', gamma='zeros')
    self._drop_paths = [drop_path.DropPath(drop_path_rate, name=f'drop_path{i}')
                        for i in range(3)]

  def call(self, pixels, centers, training=None):
    """Runs the layer.

    Args:
      pixels: [B, h, w, Cp] unactivated pixel features (a decoder stage's
        output), read activated.
      centers: [B, N, Cc] cluster centers.
      training: Training mode.

    Returns:
      centers: the updated [B, N, Cc] centers.
      prediction: the predictor's dict (CLASS_LOGITS [B, N, C + 1],
        MASK_LOGITS [B, h, w, N], PIXEL_EMBEDDINGS [B, h, w, D]) on the
        projected input centers: the assignment's affinities.
    """
    shape = tf.shape(pixels)
    pixel_space = self._pixel_conv1(self._activation(pixels), training=training)
    center_space = self._center_conv1(centers, training=training)
    embeddings = self.predictor.pixel_embedding_head(pixel_space, training=training)
    prediction = self.predictor(embeddings, center_space, training=training)
    prediction[common.PIXEL_EMBEDDINGS] = embeddings
    # Assignment and update steps on flattened pixels [B, hw, .].
    flat = lambda x: tf.reshape(x, [shape[0], -1, x.shape[-1]])
    values = self._pixel_value(flat(pixel_space), training=training)
    update = kmeans_update(flat(prediction[common.MASK_LOGITS]), values,
                           self._kmeans_value_norm, self._kmeans_conv3,
                           training=training)
    outputs = centers + self._drop_paths[0](update, training=training)
    attended = self._center_attention(
        self._center_query(center_space, training=training),
        self._center_key(center_space, training=training),
        self._center_value(center_space, training=training),
        training=training).output
    attended = self._center_conv3(attended, training=training)
    outputs = self._activation(
        outputs + self._drop_paths[1](attended, training=training))
    hidden = self._ffn_conv2(self._ffn_conv1(outputs, training=training),
                             training=training)
    outputs = self._activation(
        outputs + self._drop_paths[2](hidden, training=training))
    return outputs, prediction
