"""Recompute (gradient checkpointing) computes exactly the step it replaces."""
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf import config_files
from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import recompute_policy
from cmt_deeplab_tf.modeling.heads import mask_head
from cmt_deeplab_tf.modeling.heads import pixel_embedding_head
from cmt_deeplab_tf.modeling.layers import blocks
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import recompute
from cmt_deeplab_tf.training import task as task_lib

MIRRORED_SCRIPT = os.path.join(os.path.dirname(__file__), 'recompute_mirrored_run.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES, NUM_CLUSTERS, SIZE = 5, 8, 49
# Drop path everywhere it exists, so the masks matter.
DROP_PATH_BINDINGS = ('PixelDecoder.drop_path_rate = 0.5',
                      'TransformerDecoder.drop_path_rate = 0.5')


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def tiny_model(drop_path=True):
  for binding in DROP_PATH_BINDINGS if drop_path else ():
    gin.parse_config(binding)
  model = builder.build_model('tiny', NUM_CLASSES, NUM_CLUSTERS)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  # Zero-initialised last gammas would hide the residual branches (and their
  # drop-path masks) from the forward pass: make them count.
  for variable in model.trainable_variables:
    if 'gamma' in variable.name and not np.any(variable.numpy()):
      variable.assign(tf.fill(variable.shape, 0.5))
  return model


def one_step(model, batch, enabled, seed=7, strategy=None, jit_compile=False):
  """(loss, gradients, moving statistics) of one training step from `model`'s state.

  `enabled`: True ('all' and the loss's switch), False ('none'), or a memory
  policy (build_model.recompute, PanopticLoss.recompute).

  Under a strategy, `batch` is split over the replicas (batch size = replicas) and
  the loss and gradients are the replicas' sums. `jit_compile` compiles each
  replica's forward and backward with XLA.
  """
  strategy = strategy or tf.distribute.get_strategy()
  policy, loss_recompute = (enabled if isinstance(enabled, tuple)
                            else ('all' if enabled else 'none', enabled))
  builder.set_recompute(model, policy)
  initial = [v.numpy() for v in model.variables]
  replicas = strategy.num_replicas_in_sync
  loss_fn = panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=replicas,
                                       recompute=loss_recompute)
  tf.random.set_seed(seed)

  def replica_step(features):
    with tf.GradientTape() as tape:
      total = loss_fn(features, model(features['image'], training=True))[panoptic_loss.TOTAL]
    gradients = tape.gradient(total, model.trainable_variables)
    return total, [tf.convert_to_tensor(g) for g in gradients]

  compute = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

  @tf.function
  def step():
    features = strategy.experimental_distribute_values_from_function(
        lambda context: {k: v[context.replica_id_in_sync_group:][:1] for k, v in batch.items()})
    per_replica = strategy.run(compute, args=(features,))
    return tf.nest.map_structure(
        lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None), per_replica)

  loss, gradients = step()
  moving = [v.numpy() for v in model.non_trainable_variables]
  for variable, value in zip(model.variables, initial):
    variable.assign(value)
  return float(loss), [g.numpy() for g in gradients], moving


def assert_same_steps(model, stored, recomputed, gradient_tolerance=1e-5):
  """Loss, gradients and moving statistics agree; the statistics did move.

  Gradients agree to `gradient_tolerance` of each gradient's largest element,
  moving statistics to 1% of that.
  """
  assert np.isfinite(stored[0]) and stored[0] == pytest.approx(recomputed[0], rel=1e-6)
  # Float32 rounding of a different op order, relative to each gradient's scale.
  for name, a, b in zip([v.name for v in model.trainable_variables], stored[1], recomputed[1]):
    np.testing.assert_allclose(b, a, rtol=1e-4,
                               atol=max(1e-6, gradient_tolerance * np.abs(a).max()),
                               err_msg=name)
  # Variables get gradients through the recomputed blocks (those of a branch that
  # drop path dropped get none, with or without recompute).
  zero = [v.name for v, g in zip(model.trainable_variables, recomputed[1]) if not np.any(g)]
  assert len(zero) < len(recomputed[1]) // 4, zero
  moved = 0
  for variable, a, b in zip(model.non_trainable_variables, stored[2], recomputed[2]):
    np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=variable.name,
                               atol=max(1e-7, 0.01 * gradient_tolerance * np.abs(a).max()))
    moved += int(not np.array_equal(a, variable.numpy()))
  assert moved > 0  # Updated once, as without recompute (a second update would differ).


@pytest.mark.slow
def test_recompute_gives_the_same_step_with_drop_path_and_batch_norm():
  model = tiny_model()
  batch = cost.random_training_batch(SIZE, SIZE, NUM_CLASSES, NUM_CLUSTERS)
  assert_same_steps(model, one_step(model, batch, False), one_step(model, batch, True))


def shipped_partial_policies():
  """Each memory policy listing parts (not 'all' or 'none') that a shipped config
  binds, once, named by a config that binds it (a model's own config before the
  ablations that include it)."""
  policies = {}
  names = config_files.config_names()
  for name in sorted(names, key=lambda name: name.startswith('ablations/')):
    try:
      _, recompute, loss_recompute = cost.shipped_policy(name)
    except ValueError:  # A base file or a config without a memory policy.
      continue
    if recompute not in ('all', 'none'):
      policies.setdefault((recompute, loss_recompute), name)
  return [pytest.param(policy, id=name) for policy, name in policies.items()]


@pytest.mark.slow
@pytest.mark.parametrize('policy', shipped_partial_policies())
def test_each_shipped_policy_gives_the_same_step(policy):
  """Every policy a shipped config binds (`cost.shipped_policy`), on the tiny model
  (which has every part kind); 'all' is the test above. The policies come from the
  config folder, so a new config's policy is tested without being named here."""
  recompute, loss_recompute = policy
  model = tiny_model()
  batch = cost.random_training_batch(SIZE, SIZE, NUM_CLASSES, NUM_CLUSTERS)
  assert_same_steps(model, one_step(model, batch, False),
                    one_step(model, batch, (recompute, loss_recompute)))


@pytest.mark.slow
def test_recompute_gives_the_same_step_under_xla():
  # Without drop path: XLA draws its own random numbers in each compilation.
  model = tiny_model(drop_path=False)
  batch = cost.random_training_batch(SIZE, SIZE, NUM_CLASSES, NUM_CLUSTERS)
  # XLA fuses the recomputed forward pass differently from the stored one, and
  # its rounding grows through the batch norms back to the stem (up to 5e-4 of
  # a gradient's scale with the fused batch-norm kernel); a wrong mask or a
  # second statistics update is far larger.
  assert_same_steps(model, one_step(model, batch, False, jit_compile=True),
                    one_step(model, batch, True, jit_compile=True), gradient_tolerance=1e-3)


@pytest.mark.slow
def test_recompute_gives_the_same_step_under_mirrored_strategy(tmp_path):
  process = subprocess.run(
      [sys.executable, MIRRORED_SCRIPT], cwd=ROOT, capture_output=True, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), timeout=900, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  assert process.stdout.strip().splitlines()[-1] == 'same step on 2 replicas'


@pytest.mark.parametrize('block_class', [blocks.AxialBlock, blocks.BottleneckBlock])
def test_eager_block_recompute_matches_stored(block_class):
  block = block_class(8, drop_path_rate=0.5)
  inputs = tf.random.normal([4, 9, 9, 32])
  block(inputs, training=True)  # The building call runs plainly.
  for variable in block.trainable_variables:
    variable.assign(tf.random.normal(variable.shape, 0.5, 0.2))
  results = []
  for enabled in (False, True):
    before = [v.numpy() for v in block.non_trainable_variables]
    tf.random.set_seed(3)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      outputs = recompute.recompute(lambda x: block(x, training=True),
                                    [inputs], enabled=enabled, layer=block)
      loss = tf.reduce_sum(outputs * tf.cos(outputs))
    results.append([[tf.convert_to_tensor(g).numpy() for g in
                     tape.gradient(loss, [inputs] + block.trainable_variables)],
                    [v.numpy() for v in block.non_trainable_variables]])
    for variable, value in zip(block.non_trainable_variables, before):
      variable.assign(value)
  for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_replay_returns_forward_tensors_in_order():
  drawn = []

  def fn(x):
    drawn.append(recompute.replayable(lambda: tf.random.uniform([])))
    return x * drawn[-1]

  x = tf.constant(2.0)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = recompute.recompute(fn, [x])
  gradient = tape.gradient(y, x)
  assert len(drawn) == 2 and float(drawn[0]) == float(drawn[1])
  assert float(gradient) == pytest.approx(float(drawn[0]))


def _count_calls(monkeypatch, owner, method):
  """Counts calls of `owner.method` per instance (keyed by id)."""
  counts = {}
  original = getattr(owner, method)

  def counted(self, *args, **kwargs):
    counts[id(self)] = counts.get(id(self), 0) + 1
    return original(self, *args, **kwargs)
  monkeypatch.setattr(owner, method, counted)
  return counts


@pytest.mark.parametrize('enabled', [False, True])
def test_every_switched_layer_is_rerun_in_the_backward_pass(monkeypatch, enabled):
  # The traced gradient of a step runs the stem, each block, each CMT layer and
  # the heads once per use in the forward pass and, with recompute, once more in
  # the backward pass.
  model = tiny_model()
  builder.set_recompute(model, 'all' if enabled else 'none')
  stem_convs = {id(m) for m in model.backbone.stem.submodules
                if isinstance(m, conv_bn.ConvBN)}
  counted = {
      'blocks': _count_calls(monkeypatch, blocks.AxialBlock, 'call'),
      'bottlenecks': _count_calls(monkeypatch, blocks.BottleneckBlock, 'call'),
      'cmt_layers': _count_calls(monkeypatch, ct.ClusteringTransformerLayer, 'call'),
      'stem': _count_calls(monkeypatch, conv_bn.ConvBN, 'call'),
      'mask_head': _count_calls(monkeypatch, mask_head.MaskHead, 'call'),
      'embedding_head': _count_calls(monkeypatch, pixel_embedding_head.PixelEmbeddingHead,
                                     'call'),
  }
  images = tf.random.normal([1, SIZE, SIZE, 3])

  @tf.function
  def gradients():
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = tf.add_n([tf.reduce_sum(layer[common.MASK_LOGITS]) for layer in
                       [outputs] + outputs[common.AUX_OUTPUTS]])
    return tape.gradient(loss, model.trainable_variables)
  gradients.get_concrete_function()
  counted['stem'] = {k: v for k, v in counted['stem'].items() if k in stem_convs}
  # The mask head runs once per supervised layer (3 CMT layers), or twice that.
  counted['mask_head'] = {k: v / 3 for k, v in counted['mask_head'].items()}
  for kind, counts in counted.items():
    assert counts, kind
    assert set(counts.values()) == {2 if enabled else 1}, (kind, counts)


def _traced_calls(model, monkeypatch):
  """Calls per CMT layer (by name) and per block of the traced gradient."""
  layers = _count_calls(monkeypatch, ct.ClusteringTransformerLayer, 'call')
  axial = _count_calls(monkeypatch, blocks.AxialBlock, 'call')
  images = tf.random.normal([1, SIZE, SIZE, 3])

  @tf.function
  def gradients():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model(images, training=True)[common.MASK_LOGITS])
    return tape.gradient(loss, model.trainable_variables)
  gradients.get_concrete_function()
  names = {id(layer): layer.name
           for layer in model.transformer.transformer_layers.values()}
  return {names[k]: v for k, v in layers.items()}, axial


def test_a_policy_of_kinds_recomputes_exactly_those_parts(monkeypatch):
  # 'transformer_s8' reruns the stride-8 CMT layer only; blocks are kept.
  model = tiny_model()
  builder.set_recompute(model, 'transformer_s8, stem')
  layers, axial = _traced_calls(model, monkeypatch)
  assert layers == {'decoder_stage0_block0': 1, 'decoder_stage1_block0': 2,
                    'decoder_stage2_block0': 1}
  assert set(axial.values()) == {1}


@pytest.mark.parametrize('policy', ['transformer_s32', 'stem,stem', 'everything', ''])
def test_an_unknown_part_kind_is_an_error_naming_the_valid_ones(policy):
  with pytest.raises(ValueError, match='backbone_stage5.*transformer_s16'):
    builder.build_model('tiny', NUM_CLASSES, NUM_CLUSTERS, recompute=policy)


def test_all_is_every_kind_and_the_base_configs_recompute_every_part():
  assert recompute_policy.parse('all') == set(recompute_policy.KINDS)
  assert recompute_policy.parse('none') == set()
  # The parts the per-class switches of coco/base.gin covered: the stem, each
  # block of the backbone and of the pixel decoder, each transformer layer and
  # the heads; 'all' names each of them. A model's config may ship a searched
  # policy instead (test_each_shipped_policy_gives_the_same_step).
  assert set(recompute_policy.KINDS) == {
      'stem', 'backbone_stage2', 'backbone_stage3', 'backbone_stage4',
      'backbone_stage5', 'pixel_decoder_s16', 'pixel_decoder_s8',
      'pixel_decoder_s4', 'transformer_s16', 'transformer_s8',
      'transformer_s4', 'heads'}
  for config in ('coco/base.gin', 'cityscapes/base.gin'):
    gin.clear_config()
    gin.parse_config_file(config_files.resolve(config))
    assert gin.query_parameter('build_model.recompute') == 'all'


def test_a_recomputed_call_that_creates_variables_is_an_error():
  class LazyDense(tf_keras.layers.Layer):
    """Creates a second variable only on its second call."""

    def __init__(self):
      super().__init__()
      self.calls = 0

    def call(self, x):
      self.calls += 1
      if self.calls == 2:
        self.extra = self.add_weight(name='extra', shape=[], initializer='ones')
      return x * 2.0

  layer = LazyDense()
  x = tf.constant(1.0)
  recompute.recompute(layer, [x], layer=layer)  # Unbuilt: runs plainly, builds.
  with pytest.raises(RuntimeError, match='created variables inside a recomputed call'):
    recompute.recompute(layer, [x], layer=layer)


def test_after_keeps_values_and_orders_the_values_and_gradients():
  inputs, base = tf.constant([0.5, 2.0]), tf.constant(3.0)

  @tf.function
  def forward_backward(inputs, base):
    with tf.GradientTape() as tape:
      tape.watch([inputs, base])
      earlier = base * base
      tied = recompute.after(inputs, earlier)
      loss = tf.reduce_sum(tf.sin(tied)) + earlier
    return tied, tape.gradient(loss, [inputs, base])

  tied, (inputs_gradient, base_gradient) = forward_backward(inputs, base)
  np.testing.assert_array_equal(tied, inputs)
  np.testing.assert_allclose(inputs_gradient, np.cos(inputs.numpy()), rtol=1e-6)
  assert float(base_gradient) == 6.0  # d(base^2)/d(base); the tie adds exactly 0.
  graph = forward_backward.get_concrete_function(inputs, base).graph
  # `inputs` pass once `earlier` exists; the zero gradient of `earlier` waits for
  # the upstream gradient of `inputs`.
  earlier_op = graph.get_operation_by_name('mul')
  passing = [op for op in graph.get_operations()
             if op.type == 'Identity' and earlier_op in op.control_inputs]
  waiting = [op for op in graph.get_operations()
             if op.name.startswith('zeros_like') and op.control_inputs]
  assert passing and waiting



def test_every_output_gradient_of_a_recomputed_call_waits_for_all_of_them():
  # tf.recompute_grad gates the rerun on the gradient of its first output; here
  # that output ('a') is unused, its gradient a zero constant, and grappler
  # folds the gate away. Each gradient handed to the rerun must wait for every
  # upstream gradient.
  x = tf.constant([1.0, 2.0])

  @tf.function
  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      outputs = recompute.recompute(lambda x: {'a': 2.0 * x, 'b': tf.sin(x)}, [x])
      loss = tf.reduce_sum(tf.exp(outputs['b']))
    return tape.gradient(loss, x)

  np.testing.assert_allclose(gradient(x), np.cos(x) * np.exp(np.sin(x)), rtol=1e-6)
  graph = gradient.get_concrete_function(x).graph
  # One identity per output gradient, each with the other as a control input.
  waiting = [op for op in graph.get_operations()
             if op.type == 'Identity' and op.control_inputs]
  after = [{op.inputs[0].op.name} | {c.name for c in op.control_inputs}
           for op in waiting]
  assert len(waiting) == 2 and after[0] == after[1] and len(after[0]) == 2, after
