"""k-means cross-attention (kMaX-DeepLab, ECCV 2022, Eq. 5-8) and its layer."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling.heads import mask_transformer_heads
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import kmeans_attention


def test_assignment_is_a_hard_one_hot_argmax_over_centers():
  logits = tf.constant([[[1.0, 3.0, 2.0],
                         [5.0, 0.0, 5.0],     # A tie: the first center.
                         [-4.0, -3.0, -9.0]]])
  assignment = kmeans_attention.kmeans_assignment(logits)
  np.testing.assert_array_equal(assignment, [[[0, 1, 0], [1, 0, 0], [0, 1, 0]]])


def test_no_gradient_flows_through_the_assignment():
  logits = tf.Variable(tf.random.normal([1, 4, 3]))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(kmeans_attention.kmeans_assignment(logits) * 2.0)
  assert tape.gradient(loss, logits) is None


def test_update_sums_the_values_of_each_centers_pixels():
  values = tf.constant([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
  assignment = tf.one_hot([[0, 1, 0]], 3)  # Center 2 gets no pixel.
  update = kmeans_attention.kmeans_center_update(values, assignment)
  np.testing.assert_allclose(update, [[[4.0, 3.0], [0.0, 2.0], [0.0, 0.0]]])


def _layer(num_clusters=6, filters=8, center_channels=12):
  predictor = mask_transformer_heads.MaskTransformerHeads(
      num_classes=3, embedding_channels=4, head_channels=8,
      center_feature_channels=None, activation=activations.GELU)
  return kmeans_attention.KMaXTransformerLayer(
      predictor, filters=filters, center_channels=center_channels,
      num_heads=2, feed_forward_channels=16)


def test_layer_shapes_and_its_prediction_is_on_its_input():
  layer = _layer()
  pixels = tf.random.normal([2, 5, 7, 10])
  centers = tf.random.normal([2, 6, 12])
  updated, prediction = layer(pixels, centers, training=False)
  assert updated.shape == (2, 6, 12)
  assert prediction[common.MASK_LOGITS].shape == (2, 5, 7, 6)
  assert prediction[common.CLASS_LOGITS].shape == (2, 6, 4)
  assert prediction[common.PIXEL_EMBEDDINGS].shape == (2, 5, 7, 4)


def test_layer_starts_as_the_activated_identity():
  # The last batch norm of each residual branch starts with gamma = 0 (as in
  # DeepLab2), so at initialisation the k-means update, the self-attention
  # and the FFN add nothing: centers -> gelu(gelu(centers)).
  layer = _layer()
  centers = tf.random.normal([1, 6, 12])
  updated, _ = layer(tf.random.normal([1, 3, 3, 10]), centers, training=False)
  gelu = activations.get_activation(activations.GELU)
  np.testing.assert_allclose(updated, gelu(gelu(centers)), rtol=1e-5,
                             atol=1e-6)
