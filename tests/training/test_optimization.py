"""Tests of the optimizer's split of backbone and other variables."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import cmt_deeplab
from cmt_deeplab_tf.modeling import rfn
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.training import optimization

_IMAGES = tf.zeros([1, 33, 33, 3])


def _tiny_backbone(name):
  return axial_resnet.AxialResNet(num_blocks=(1, 1, 1, 1), width_multiplier=0.25,
                                  drop_path_rate=0.0, name=name)


def _names(variables):
  return sorted(v.name for v in variables)


def test_split_puts_exactly_the_backbone_variables_first():
  model = builder.build_model('tiny', num_classes=3, num_clusters=4)
  model(_IMAGES, training=True)
  backbone, rest = optimization.split_backbone_variables(model)
  # Independent expectation: the variables created under the backbone's name scope.
  assert backbone and _names(backbone) == _names(
      v for v in model.trainable_variables if '/tiny_axial_resnet/' in v.name
      or v.name.startswith('tiny_axial_resnet/'))
  assert len(backbone) + len(rest) == len(model.trainable_variables)
  assert not {id(v) for v in backbone} & {id(v) for v in rest}


def test_split_of_rfn_takes_both_backbones():
  first = cmt_deeplab.build_network(_tiny_backbone('backbone_a'), 3, 4, (1, 1, 1),
                                    width_multiplier=0.25, num_heads=2, name='first')
  second = cmt_deeplab.build_network(_tiny_backbone('backbone_b'), 3, 4, (1, 1, 1),
                                     width_multiplier=0.25, num_heads=2,
                                     learn_initial_centers=False, name='second')
  model = rfn.RecursiveFeatureNetwork(first, second)
  model(_IMAGES, training=True)
  backbone, _ = optimization.split_backbone_variables(model)
  in_a = [v for v in backbone if 'backbone_a' in v.name]
  in_b = [v for v in backbone if 'backbone_b' in v.name]
  assert in_a and in_b and len(in_a) + len(in_b) == len(backbone)
  assert len(in_a) == len(first.backbone.trainable_variables)


def test_model_without_backbone_variables_is_rejected_by_name():
  model = tf_keras.Sequential([tf_keras.layers.Dense(2)], name='plain')
  model(tf.zeros([1, 3]))
  with pytest.raises(TypeError, match="'plain'.*backbone_variables"):
    optimization.split_backbone_variables(model)


def _factory_adamw(config):
  """What Model Garden's factory builds from the same settings (the reference)."""
  from official.modeling.optimization import optimizer_factory  # pylint: disable=g-import-not-at-top
  factory = optimizer_factory.OptimizerFactory(optimization._params(config, 1.0))  # pylint: disable=protected-access
  return factory.build_optimizer(factory.build_learning_rate())


def test_updates_equal_model_gardens_adamw():
  config = optimization.OptimizerConfig(train_steps=10, warmup_steps=2,
                                        learning_rate=0.1, weight_decay=0.5)
  initial = {'kernel': [[1.0, -2.0], [0.5, 3.0]], 'bias': [0.25, -0.75]}
  gradients = [[[0.3, -0.1], [0.2, 0.4]], [0.5, -0.5]]
  results = []
  for optimizer in (optimization.build_optimizer(config), _factory_adamw(config)):
    variables = [tf.Variable(initial[name], name=name) for name in ('kernel', 'bias')]

    @tf.function
    def step(optimizer=optimizer, variables=variables):
      optimizer.apply_gradients(zip([tf.constant(g) for g in gradients], variables))
    for _ in range(3):
      step()
    results.append([v.numpy() for v in variables])
  for ours, reference in zip(*results):
    np.testing.assert_allclose(ours, reference, rtol=1e-6)
  # The kernel is decayed, the bias not: the decay was applied (and only there).
  assert not np.allclose(results[0][0], initial['kernel'])


def test_weight_decay_waits_for_the_gradient():
  config = optimization.OptimizerConfig(train_steps=10, warmup_steps=0, weight_decay=0.5)
  optimizer = optimization.build_optimizer(config)
  kernel = tf.Variable([[1.0, 2.0]], name='kernel')
  x = tf.constant([[3.0], [4.0]])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.matmul(x, kernel))
    gradient = tape.gradient(loss, kernel)
    optimizer.apply_gradients([(gradient, kernel)])
    return gradient

  graph = step.get_concrete_function().graph
  decays = [op for op in graph.get_operations()
            if op.type == 'AssignSubVariableOp' and 'update' in op.name]
  assert decays
  for decay in decays:  # Each decay (var -= lr * wd * var) waits for the gradient.
    upstream, frontier = set(), [decay]
    while frontier:
      op = frontier.pop()
      for parent in [t.op for t in op.inputs] + list(op.control_inputs):
        if parent not in upstream:
          upstream.add(parent)
          frontier.append(parent)
    assert any(op.name.startswith('gradient_tape') for op in upstream), decay.name
