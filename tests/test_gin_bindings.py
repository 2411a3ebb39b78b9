"""Gin never lies: every binding the shipped configs use is honoured, and a
binding the code cannot honour is an error that names it.

Each parameter bound in gin_configs/** is bound here to another value; the
object the code builds (as the task / build_model build it) must carry it.
"""
import os
import pathlib
import re
import types

import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import config_files
from cmt_deeplab_tf.data import augment
from cmt_deeplab_tf.losses import instance_discrimination
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import recompute_policy
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import transformer_decoder
from cmt_deeplab_tf.modeling.layers import cmt_implementations
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import task as task_lib
from tests.modeling import cmt_test_utils

_GIN_CONFIGS = pathlib.Path(config_files.config_root())
_BINDING = re.compile(r'^(\w+)\.(\w+)\s*=', re.M)


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _shipped_bindings():
  """{(configurable, parameter)} bound anywhere under gin_configs/."""
  return {match.groups() for path in _GIN_CONFIGS.rglob('*.gin')
          for match in _BINDING.finditer(path.read_text())}


def _tiny_transformer_layers():
  model = builder.build_model('tiny', num_classes=3, num_clusters=4)
  return list(model.transformer.transformer_layers.values())


def _layer_switch(parameter, value):
  """A CMT-layer binding: every layer of the built tiny model carries it."""
  def check():
    layers = _tiny_transformer_layers()
    assert layers and all(layer.get_config()[parameter] == value
                          for layer in layers)
  return f'ClusteringTransformerLayer.{parameter}', value, check


def _decoder_implementation(value):
  def check():  # Every CMT layer of the built tiny model computes with it.
    layers = _tiny_transformer_layers()
    assert layers and all(layer.get_config()['implementation'] == value
                          for layer in layers)
  return 'TransformerDecoder.implementation', value, check


def _build_model(parameter, value, check_model):
  def check():
    assert check_model(builder.build_model(**(
        {} if parameter == 'name' else {'name': 'tiny'})))
  return f'build_model.{parameter}', value, check


def _kmax_semantic_head(value):
  def check():  # kmax_tiny's default is 'pixel_decoder', without the ASPP branch.
    model = builder.build_model('kmax_tiny', num_classes=3, num_clusters=4)
    assert model.semantic_decoder is not None
  return 'build_model.kmax_semantic_head', value, check


def _backbone_activation(value):
  def check():  # The tiny model's backbone activates its blocks with it.
    model = builder.build_model('tiny', num_classes=3, num_clusters=4)
    endpoints = model.backbone(tf.random.stateless_normal([1, 33, 33, 3], [1, 2]))
    np.testing.assert_allclose(
        endpoints[axial_resnet.RES3],
        tf.nn.gelu(endpoints[axial_resnet.STAGE3], approximate=False), atol=1e-6)
  return 'AxialResNet.activation', value, check


def _loss_recompute():
  def check():
    assert panoptic_loss.PanopticLoss(num_classes=3).recompute is True
  return 'PanopticLoss.recompute', True, check


def _experiment(parameter, value):
  def check():
    assert getattr(experiment.ExperimentConfig(), parameter) == value
  return f'ExperimentConfig.{parameter}', value, check


def _optimizer(parameter, value):
  def check():  # As the task builds it.
    config = optimization.OptimizerConfig(train_steps=100_000)
    assert getattr(config, parameter) == value
  return f'OptimizerConfig.{parameter}', value, check


def _post_processor(parameter, value):
  def check():  # As the task builds it.
    processor = post_processing.PostProcessor([True, False], 1000)
    assert getattr(processor, '_' + parameter) == value
  return f'PostProcessor.{parameter}', value, check


class _Sampled(Exception):
  pass


def _instance_discrimination(parameter, value):
  def check():  # PanopticLoss calls the loss with the bound sampling.
    seen = {}

    def record(targets, sample_k, sample_temperature):
      del targets, sample_k
      seen['sample_temperature'] = sample_temperature
      raise _Sampled()
    original = instance_discrimination._sample_pixels  # pylint: disable=protected-access
    instance_discrimination._sample_pixels = record  # pylint: disable=protected-access
    try:
      with pytest.raises(_Sampled):
        instance_discrimination.instance_discrimination_loss(
            tf.zeros([1, 2, 2, 3]), types.SimpleNamespace(
                mask_index=None, pixel_valid=None), sample_k=1)
    finally:
      instance_discrimination._sample_pixels = original  # pylint: disable=protected-access
    assert seen[parameter] == value
  return f'instance_discrimination_loss.{parameter}', value, check


def _training_dataset(config):
  """The training dataset as the task builds it."""
  return task_lib.PanopticTask(config).build_inputs(True)


def _random_scale_arguments(monkeypatch, tfrecord_dir):
  """The scale arguments the training pipeline (as the task builds it) uses."""
  seen = {}

  def record(image, label, min_scale, max_scale, scale_step, seed):
    del seed
    seen.update(min_scale=min_scale, max_scale=max_scale, scale_step=scale_step)
    return image, label
  monkeypatch.setattr(augment, 'random_scale', record)
  config = experiment.ExperimentConfig(
      dataset_name='synthetic',
      train_file_pattern=os.path.join(tfrecord_dir, 'train-*'),
      train_batch_size=1, train_crop_size=(33, 33), max_num_masks=4)
  next(iter(_training_dataset(config)))
  return seen


def _dataset(parameter, value):
  return f'panoptic_dataset.{parameter}', value, parameter


_CHECKS = [
    _layer_switch('center_update', 'attention'),
    _layer_switch('use_assignment_residual', False),
    _layer_switch('update_pixels', False),
    _layer_switch('pixel_update_from_assignment', False),
    _layer_switch('reference_mask', None),
    _layer_switch('use_coordinate_features', False),
    _decoder_implementation(cmt_implementations.PLAIN),
    _build_model('name', 'tiny', lambda model: model.name == 'tiny'),
    _build_model('num_clusters', 3,
                 lambda model: model.transformer.num_clusters == 3),
    _experiment('dataset_name', 'cityscapes'),
    _experiment('train_file_pattern', 'a/train-*'),
    _experiment('eval_file_pattern', 'a/val-*'),
    _experiment('train_batch_size', 3),
    _experiment('eval_batch_size', 5),
    _experiment('train_crop_size', (33, 65)),
    _experiment('eval_crop_size', (65, 33)),
    _experiment('max_num_masks', 7),
    _experiment('train_steps', 11),
    _experiment('steps_per_loop', 13),
    _experiment('summary_interval', 17),
    _experiment('checkpoint_interval', 19),
    _experiment('eval_interval', 23),
    _experiment('seed', 29),
    _experiment('deterministic', True),  # Honoured: tests/training/test_repeatable.py.
    _experiment('init_checkpoint', 'pretrained/ckpt-1'),
    _experiment('init_checkpoint_format', 'deeplab2'),
    _experiment('init_checkpoint_modules', 'backbone'),
    _backbone_activation('gelu'),
    _build_model('recompute', 'all', lambda model: model.recompute_parts == set(
        recompute_policy.KINDS)),
    _loss_recompute(),
    _kmax_semantic_head('aspp'),
    _optimizer('learning_rate', 0.125),
    _optimizer('warmup_steps', 3),
    _optimizer('decay_power', 0.5),
    _optimizer('weight_decay', 0.25),
    _optimizer('backbone_learning_rate_multiplier', 0.375),
    _optimizer('gradient_clip_norm', 2.5),
    _post_processor('method', 'maskwise'),
    _post_processor('thing_area_limit', 3),
    _post_processor('stuff_area_limit', 5),
    _post_processor('thing_class_threshold', 0.25),
    _post_processor('stuff_class_threshold', 0.125),
    _post_processor('pixel_confidence_threshold', 0.25),
    _post_processor('overlap_threshold', 0.375),
    _post_processor('reorder_class_weight', 0.5),
    _post_processor('reorder_mask_weight', 0.75),
    _instance_discrimination('sample_temperature', 1.25),
]
_DATASET_CHECKS = [
    _dataset('min_scale', 0.75),
    _dataset('max_scale', 1.25),
    _dataset('scale_step', 0.125),
]


def test_every_shipped_binding_is_checked_here():
  checked = {tuple(binding.split('.')) for binding, _, _ in
             _CHECKS + _DATASET_CHECKS}
  checked.add(('panoptic_dataset', 'shuffle_buffer_size'))
  missing = _shipped_bindings() - checked
  assert not missing, f'Add a check for {sorted(missing)}.'


@pytest.mark.parametrize('binding,value,check', _CHECKS,
                         ids=[c[0] for c in _CHECKS])
def test_binding_is_honoured_and_the_check_can_fail(binding, value, check):
  with pytest.raises(AssertionError):
    check()  # Without the binding the built object differs.
  gin.bind_parameter(binding, value)
  check()


def test_dataset_bindings_reach_the_training_pipeline(monkeypatch,
                                                       tfrecord_dir):
  default = _random_scale_arguments(monkeypatch, tfrecord_dir)
  for binding, value, parameter in _DATASET_CHECKS:
    assert default[parameter] != value
    gin.bind_parameter(binding, value)
  bound = _random_scale_arguments(monkeypatch, tfrecord_dir)
  assert bound == {parameter: value for _, value, parameter in _DATASET_CHECKS}


def test_shuffle_buffer_size_binding_reaches_the_training_pipeline(
    tfrecord_dir):
  gin.bind_parameter('panoptic_dataset.shuffle_buffer_size', 0)
  config = experiment.ExperimentConfig(
      dataset_name='synthetic',
      train_file_pattern=os.path.join(tfrecord_dir, 'train-*'))
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                     match='buffer_size'):
    next(iter(_training_dataset(config)))


@pytest.mark.parametrize('binding', [
    'ClusteringTransformerLayer.num_heads = 4',
    'ClusteringTransformerLayer.filters = 64',
    'ClusteringTransformerLayer.center_channels = 64',
    'ClusteringTransformerLayer.feed_forward_channels = 64',
    'ClusteringTransformerLayer.drop_path_rate = 0.1',
    'TransformerDecoder.num_heads = 4',
    'TransformerDecoder.filters = 64',
    'TransformerDecoder.num_clusters = 64',
    'TransformerDecoder.location_strides = [16]',
    'PixelDecoder.num_blocks = (1, 1, 1)',
    'PixelDecoder.width_multiplier = 0.5',
    'MaskTransformerHeads.embedding_channels = 64',
    'TransformerDecoder.recompute = True',  # One policy: build_model.recompute.
    'AxialBlock.recompute = True',
    'BottleneckBlock.recompute = True',
    'ClassHead.feature_channels = 64',
    'AxialResNet.num_blocks = (1, 1, 1, 1)',
    'AxialResNet.width_multiplier = 0.5',
    "AxialResNet.stem_type = 'resnet'",
    'AxialBlock.filters = 64',
    'AxialAttention.key_depth = 64',
    'get_norm_layer.axis = 1',
    'panoptic_dataset.batch_size = 4',
    'PostProcessor.label_divisor = 10',
    'PanopticLoss.num_classes = 10',
    'OptimizerConfig.train_steps = 10',
])
def test_binding_a_parameter_its_caller_sets_fails_at_parse_time(binding):
  parameter = binding.split('.')[1].split()[0]
  with pytest.raises(ValueError, match=parameter):
    gin.parse_config(binding)


def test_a_cmt_switch_bound_for_max_deeplab_is_an_error_naming_it():
  gin.bind_parameter('ClusteringTransformerLayer.update_pixels', False)
  with pytest.raises(ValueError,
                     match='ClusteringTransformerLayer.update_pixels'):
    transformer_decoder.TransformerDecoder(transformer_decoder.DecoderOptions(
        ['decoder_stage0_block0'], dual_path=True))
  # A binding to the value the dual-path layer sets anyway is honoured.
  gin.bind_parameter('ClusteringTransformerLayer.update_pixels', True)
  transformer_decoder.TransformerDecoder(transformer_decoder.DecoderOptions(
      ['decoder_stage0_block0'], dual_path=True))


def test_a_backbone_binding_the_tiny_model_overrides_is_an_error():
  gin.bind_parameter('AxialResNet.drop_path_rate', 0.5)
  with pytest.raises(ValueError, match='AxialResNet.drop_path_rate'):
    builder.build_model('tiny')


def test_build_network_honours_location_strides():
  network = cmt_test_utils.tiny_network(location_strides=[16, 16, 16])
  filters = [layer.get_config()['filters']
             for layer in network.transformer.transformer_layers.values()]
  derived = cmt_test_utils.tiny_network()
  derived_filters = [
      layer.get_config()['filters']
      for layer in derived.transformer.transformer_layers.values()]
  assert filters == [filters[0]] * 3
  assert derived_filters == [filters[0], filters[0] // 2, filters[0] // 4]
  with pytest.raises(ValueError, match='location_strides'):
    cmt_test_utils.tiny_network(location_strides=[16, 8])
