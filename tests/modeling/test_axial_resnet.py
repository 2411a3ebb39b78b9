"""Tests of the Axial-ResNet backbones."""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import blocks

# Narrow models for fast tests: widths / 8 (and 2 heads, see `two_heads`).
TINY = dict(width_multiplier=0.125)
# Fewer blocks, still with a strided bottleneck, a bottleneck and an axial block
# in stage 4 and an axial block in stage 5.
SMALL = dict(num_blocks=(1, 1, 2, 1), width_multiplier=0.125)


@pytest.fixture(autouse=True)
def default_gin_config():
  """Runs each test with no gin bindings left by other tests."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def two_heads():
  with gin.unlock_config():
    gin.bind_parameter('AxialAttention.num_heads', 2)


def _trainable_count(model, name_part=''):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights
             if name_part in w.name)


def test_endpoints_shapes_and_strides_on_odd_sizes(two_heads):
  model = axial_resnet.axial_r50(**TINY)
  endpoints = model(tf.zeros([2, 65, 97, 3]), training=False)
  assert set(endpoints) == set(axial_resnet.ENDPOINTS +
                               axial_resnet.PREACTIVATIONS)
  for activated, preactivation in zip(axial_resnet.ENDPOINTS,
                                      axial_resnet.PREACTIVATIONS):
    np.testing.assert_array_equal(endpoints[activated],
                                  tf.nn.relu(endpoints[preactivation]))
  # Stride 4, 8, 16, 16: ceil(65 / s) x ceil(97 / s).
  assert endpoints[axial_resnet.RES2].shape == (2, 17, 25, 32)
  assert endpoints[axial_resnet.RES3].shape == (2, 9, 13, 64)
  assert endpoints[axial_resnet.RES4].shape == (2, 5, 7, 128)
  assert endpoints[axial_resnet.RES5].shape == (2, 5, 7, 256)


@pytest.mark.parametrize('output_stride, want', [(32, (3, 4)), (8, (9, 13))])
def test_output_stride(two_heads, output_stride, want):
  model = axial_resnet.AxialResNet(output_stride=output_stride, **SMALL)
  endpoints = model(tf.zeros([1, 65, 97, 3]), training=False)
  assert endpoints[axial_resnet.RES5].shape[1:3] == want


def test_axial_blocks_where_deeplab2_puts_them(two_heads):
  model = axial_resnet.axial_r50(**TINY)
  kinds = [[type(block).__name__[0] for block in stage]
           for stage in model.stages]
  # Axial from ResNet stride 16: blocks 2-6 of stage 4 and all of stage 5.
  assert kinds == [['B'] * 3, ['B'] * 4, ['B'] + ['A'] * 5, ['A'] * 3]
  plain = axial_resnet.resnet50(**TINY)
  assert all(isinstance(block, blocks.BottleneckBlock)
             for stage in plain.stages for block in stage)


def test_linear_drop_path_schedule():
  # DeepLab2: rate * (log2(stride) - 1) / 4 from ResNet stride 16 on.
  rates = [axial_resnet.drop_path_rate_at(s, 0.2, 'linear', 16)
           for s in (4, 8, 16, 32)]
  np.testing.assert_allclose(rates, [0.0, 0.0, 0.15, 0.2])
  assert axial_resnet.drop_path_rate_at(32, 0.2, 'constant', 16) == 0.2
  with pytest.raises(ValueError, match='drop_path_schedule'):
    axial_resnet.drop_path_rate_at(32, 0.2, 'cosine', 16)


def test_gin_configures_the_backbone_and_its_blocks():
  with gin.unlock_config():
    gin.parse_config("""
        AxialResNet.output_stride = 32
        AxialResNet.drop_path_schedule = 'constant'
        AxialResNet.drop_path_rate = 0.5
    """)
  model = axial_resnet.axial_r50()
  assert model.output_stride == 32
  rates = [[block._drop_path.rate for block in stage] for stage in model.stages]
  # Constant rate from ResNet stride 16 (block 2 of stage 4) on.
  assert rates == [[0.0] * 3, [0.0] * 4, [0.0] + [0.5] * 5, [0.5] * 3]


def test_runs_at_sizes_other_than_the_first(two_heads):
  model = axial_resnet.AxialResNet(**SMALL)
  run = tf.function(lambda x: model(x, training=False),
                    input_signature=[tf.TensorSpec([None, None, None, 3])])
  for size in [(33, 33), (49, 81)]:
    endpoints = run(tf.random.normal([1, *size, 3]))
    assert endpoints[axial_resnet.RES5].shape[1:3] == (
        (size[0] + 15) // 16, (size[1] + 15) // 16)


def test_every_variable_gets_a_gradient(two_heads):
  tf_keras.utils.set_random_seed(0)
  model = axial_resnet.AxialResNet(drop_path_rate=0.0, **SMALL)
  images = tf.random.normal([2, 33, 33, 3])
  model(images)
  # Zero-initialized gammas would block the gradients of their branches.
  for weight in model.trainable_weights:
    if 'gamma' in weight.name and not np.any(weight.numpy()):
      weight.assign(tf.ones_like(weight))
  with tf.GradientTape() as tape:
    endpoints = model(images, training=True)
    loss = sum(tf.reduce_mean(tf.square(t)) for t in endpoints.values())
  grads = tape.gradient(loss, model.trainable_variables)
  for weight, grad in zip(model.trainable_variables, grads):
    assert grad is not None, weight.name
    grad = tf.convert_to_tensor(grad)
    # Softmax is shift-invariant: the similarity norms' betas get zero.
    if 'similarity' in weight.name and 'beta' in weight.name:
      continue
    assert np.abs(grad.numpy()).max() > 0, weight.name


def test_xla_matches_eager(two_heads):
  model = axial_resnet.AxialResNet(**SMALL)
  images = tf.random.normal([1, 33, 49, 3])
  eager = model(images, training=False)
  compiled = tf.function(lambda x: model(x, training=False),
                         jit_compile=True)(images)
  for name in axial_resnet.ENDPOINTS:
    np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-3,
                               atol=1e-3)


@pytest.mark.slow
def test_xla_training_step(two_heads):
  model = axial_resnet.AxialResNet(**SMALL)
  images = tf.random.normal([2, 33, 33, 3])
  model(images)

  @tf.function(jit_compile=True)
  def loss_and_grads(x):
    with tf.GradientTape() as tape:
      loss = sum(tf.reduce_mean(t) for t in model(x, training=True).values())
    return loss, tape.gradient(loss, model.trainable_variables)

  loss, grads = loss_and_grads(images)
  assert np.isfinite(loss.numpy())
  assert all(grad is not None for grad in grads)


def test_mixed_bfloat16(two_heads):
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    model = axial_resnet.AxialResNet(**SMALL)
    endpoints = model(tf.random.normal([1, 33, 33, 3]), training=True)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  for tensor in endpoints.values():
    assert tensor.dtype == tf.bfloat16
    assert np.all(np.isfinite(tf.cast(tensor, tf.float32).numpy()))
  assert all(w.dtype == tf.float32 for w in model.weights)


def test_axial_r50_parameters_match_deeplab2():
  # DeepLab2's Axial-R50 (MaX-DeepLab-S / kMaX-DeepLab backbone): 41.34M
  # trainable parameters, 19.35M of them in axial attention (docs/design.md, Sec. 3).
  model = axial_resnet.axial_r50()
  model(tf.zeros([1, 17, 17, 3]))
  assert abs(_trainable_count(model) / 41.34e6 - 1) < 0.01
  assert abs(_trainable_count(model, '_axis/') / 19.35e6 - 1) < 0.01


def test_resnet50_parameters_by_hand():
  model = axial_resnet.resnet50()
  model(tf.zeros([1, 17, 17, 3]))
  stem = 9 * (3 * 64 + 64 * 64 + 64 * 128) + 2 * (64 + 64 + 128)
  want, channels = stem, 128
  for filters, count in zip((64, 128, 256, 512), (3, 4, 6, 3)):
    for _ in range(count):
      want += channels * filters + 9 * filters**2 + filters * 4 * filters
      want += 2 * (filters + filters + 4 * filters)
      if channels != 4 * filters:
        want += channels * 4 * filters + 2 * 4 * filters
      channels = 4 * filters
  assert _trainable_count(model) == want


@pytest.mark.slow
def test_axial_r104_adds_eighteen_stage4_axial_blocks():
  r50 = axial_resnet.axial_r50()
  r104 = axial_resnet.axial_r104()
  for model in (r50, r104):
    model(tf.zeros([1, 17, 17, 3]))
  block = r50.stages[2][-1]
  assert isinstance(block, blocks.AxialBlock)
  np.testing.assert_equal(
      _trainable_count(r104) - _trainable_count(r50),
      18 * _trainable_count(block))


@pytest.mark.parametrize('kwargs', [dict(num_blocks=(3, 4, 6)),
                                    dict(num_blocks=(3, 0, 6, 3)),
                                    dict(output_stride=12)])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    axial_resnet.AxialResNet(**kwargs)


def test_widths_and_stem_come_from_the_model_config_not_gin():
  # build_model.width_multiplier and the named configs set them; a binding
  # that would be overridden is an error.
  for binding in ('AxialResNet.width_multiplier = 0.5',
                  "AxialResNet.stem_type = 'resnet'"):
    with pytest.raises(ValueError, match='denylisted'):
      gin.parse_config(binding)
  gin.parse_config("AxialResNet.activation = 'gelu'")  # The activation switch.
  endpoints = axial_resnet.axial_r50(**TINY)(tf.random.normal([1, 33, 33, 3]))
  np.testing.assert_allclose(
      endpoints[axial_resnet.RES3],
      tf.nn.gelu(endpoints[axial_resnet.STAGE3], approximate=False), atol=1e-6)
