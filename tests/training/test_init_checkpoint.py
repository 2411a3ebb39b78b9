"""ExperimentConfig.init_checkpoint: formats and modules (fine-tuning on a new class set)."""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import init_checkpoint
from cmt_deeplab_tf.training import task as task_lib
from tests.checkpoints import fixtures

STRATEGY = tf.distribute.get_strategy()
CLASS_LOGITS = ('class_head/classifier/', 'semantic_head/conv_head/output/')


@pytest.fixture(autouse=True)
def clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _tiny(num_classes, seed):
  # As in a run, the gin configuration names the model.
  gin.bind_parameter('build_model.name', 'tiny')
  gin.bind_parameter('build_model.num_clusters', 4)
  tf_keras.utils.set_random_seed(seed)
  model = builder.build_model(num_classes=num_classes)
  task_lib.create_all_variables(model, STRATEGY)
  return model


def _save(model, tmp_path):
  return tf.train.Checkpoint(model=model).write(str(tmp_path / 'init'))


@pytest.mark.slow  # ~20 s; tests/checkpoints covers the DeepLab2 format by default.
def test_native_fine_tuning_on_another_class_count(tmp_path):
  source = _tiny(num_classes=3, seed=1)
  path = _save(source, tmp_path)
  model = _tiny(num_classes=5, seed=2)
  initial = {v.name: v.numpy() for v in model.variables}
  with pytest.raises(ValueError, match=r'predicts 3 classes, the model 5.*'
                                       r"all_but_class_head"):
    init_checkpoint.restore_init_checkpoint(model, path, 'all')
  init_checkpoint.restore_init_checkpoint(model, path, 'all_but_class_head',
                                          build_model=lambda n: _tiny(n, seed=3))
  logits_layers = 0
  for theirs, ours in zip(source.variables, model.variables):
    if any(part in ours.name for part in CLASS_LOGITS):
      logits_layers += 1
      np.testing.assert_array_equal(ours.numpy(), initial[ours.name])
    else:
      np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  assert logits_layers == 4  # Kernel and bias of the class and semantic heads.
  # The fine-tuned model predicts its own 5 classes + no-object.
  outputs = model(tf.zeros([1, 33, 33, 3]), training=False)
  assert outputs[common.CLASS_LOGITS].shape[-1] == 6


def test_bad_format_and_modules_name_the_field():
  # Checked before the model or the checkpoint is looked at.
  with pytest.raises(ValueError, match='init_checkpoint_format'):
    init_checkpoint.restore_init_checkpoint(None, 'unused', 'all', 'pytorch')
  with pytest.raises(ValueError, match='init_checkpoint_modules'):
    init_checkpoint.restore_init_checkpoint(None, 'unused', 'heads')


def test_deeplab2_format_initialises_the_backbone():
  # DeepLab2's ImageNet ResNet-50 into the backbone of cmt_deeplab_r50.
  fixture_set = fixtures.COMMITTED
  backbone = builder.cmt_deeplab_r50(
      3, 4, width_multiplier=fixture_set.width).backbone
  backbone(tf.zeros([1, 33, 33, 3]))
  init_checkpoint.restore_init_checkpoint(
      backbone, fixture_set.checkpoint_path(fixtures.RESNET50), 'all',
      'deeplab2')
  image, reference = fixture_set.reference(fixtures.RESNET50)
  # Output stride 16 here (32 in the fixture): res2..res4 are computed alike.
  endpoints = backbone(image, training=False)
  for name in ('res2', 'res3', 'res4'):
    fixtures.assert_close_to_reference(endpoints[name],
                                       reference[f'encoder/{name}'], name)
