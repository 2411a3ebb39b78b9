"""Tests of the optimizer's split of backbone and other variables."""
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
