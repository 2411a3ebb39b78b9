"""Tests of the class, mask, pixel-embedding and semantic heads."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling.heads import class_head
from cmt_deeplab_tf.modeling.heads import mask_head
from cmt_deeplab_tf.modeling.heads import mask_transformer_heads
from cmt_deeplab_tf.modeling.heads import pixel_embedding_head
from cmt_deeplab_tf.modeling.heads import semantic_head

BN_SCALE = 1.0 / np.sqrt(1.0 + 1e-3)


def test_class_head_starts_with_no_object_probability_0_9():
  head = class_head.ClassHead(num_classes=133)
  logits = head(tf.random.normal([2, 6, 32]), training=False)
  assert logits.shape == (2, 6, 134) and logits.dtype == tf.float32
  # The classifier kernel starts near zero (std 0.01); the bias alone gives
  # no-object exactly 0.9.
  head._classifier.kernel.assign(tf.zeros_like(head._classifier.kernel))
  logits = head(tf.random.normal([2, 6, 32]), training=False)
  np.testing.assert_allclose(tf.nn.softmax(logits)[..., -1], 0.9, rtol=1e-5)


def test_class_head_rejects_bad_arguments():
  for kwargs in (dict(num_classes=0), dict(num_classes=3, void_prior=1.0)):
    try:
      class_head.ClassHead(**kwargs)
    except ValueError:
      continue
    raise AssertionError(f'no ValueError for {kwargs}')


def test_pixel_embeddings_have_unit_norm():
  head = pixel_embedding_head.PixelEmbeddingHead(embedding_channels=8,
                                                 head_channels=16)
  embeddings = head(tf.random.normal([2, 9, 7, 12]), training=True)
  assert embeddings.shape == (2, 9, 7, 8)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0,
                             rtol=1e-5)


def test_mask_logits_are_scaled_dot_products():
  head = mask_head.MaskHead(embedding_channels=8, feature_channels=16)
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal([2, 5, 3, 8]).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
  centers = rng.standard_normal([2, 4, 10]).astype(np.float32)
  logits = head(tf.constant(embeddings), tf.constant(centers),
                training=False).numpy()
  feature = np.maximum(centers @ head._feature._dense.kernel.numpy() *
                       BN_SCALE, 0.0)
  kernels = feature @ head._embedding._dense.kernel.numpy() * BN_SCALE
  # One shared BN over all mask slots, gamma initialised at 0.1.
  expected = np.einsum('bhwd,bnd->bhwn', embeddings, kernels) * BN_SCALE * 0.1
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_semantic_head_shape():
  head = semantic_head.SemanticHead(num_classes=5, head_channels=8)
  logits = head(tf.random.normal([1, 9, 11, 6]), training=True)
  assert logits.shape == (1, 9, 11, 5) and logits.dtype == tf.float32
  void = semantic_head.SemanticHead(num_classes=5, head_channels=8,
                                    void_logit=True)
  assert void(tf.random.normal([1, 9, 11, 6])).shape == (1, 9, 11, 6)


def test_shared_heads_predict_classes_and_masks():
  heads = mask_transformer_heads.MaskTransformerHeads(
      num_classes=3, embedding_channels=8, head_channels=8,
      center_feature_channels=8)
  embeddings = heads.pixel_embedding_head(tf.random.normal([2, 5, 5, 6]))
  outputs = heads(embeddings, tf.random.normal([2, 4, 12]))
  assert outputs[common.CLASS_LOGITS].shape == (2, 4, 4)
  assert outputs[common.MASK_LOGITS].shape == (2, 5, 5, 4)
