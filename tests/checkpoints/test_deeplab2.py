"""Imported DeepLab2 checkpoints reproduce DeepLab2's own outputs.

The fixtures (`../shared/fixtures/deeplab2`) are DeepLab2-made checkpoints with
random weights (batch-norm statistics included) at 1/8 width and DeepLab2's
outputs for one image. Tolerance: 1e-4 of each output's scale (max |x|), what
float32 round-off leaves after ~50 layers; a mapping error moves outputs by
the order of their scale.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.checkpoints import deeplab2
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import stems
from tests.checkpoints import fixtures

W = fixtures.FIXTURE_WIDTH

# Fixture folder -> our backbone as DeepLab2 built it there.
BACKBONES = {
    fixtures.MAX_DEEPLAB_S_BACKBONE: lambda: axial_resnet.axial_r50(
        width_multiplier=W, output_stride=16),
    fixtures.AXIAL_RESNET50_GELU: lambda: axial_resnet.axial_r50(
        width_multiplier=W, output_stride=32, activation=activations.GELU),
    fixtures.RESNET50: lambda: axial_resnet.resnet50(
        width_multiplier=W, output_stride=32, stem_type=stems.RESNET),
}


def _import(model, folder, modules=deeplab2.ALL):
  checkpoint = deeplab2.DeepLab2Checkpoint(fixtures.checkpoint_path(folder))
  plan = deeplab2.plan_import(model, checkpoint, modules)
  deeplab2.apply_plan(plan, checkpoint)
  return plan


@pytest.fixture(scope='module')
def max_deeplab_s():
  """Our MaX-DeepLab-S at the fixture's width with the COCO fixture imported."""
  model = builder.build_model('max_deeplab_s', num_classes=133,
                              num_clusters=128, width_multiplier=W)
  model(tf.zeros([1, 33, 33, 3]), training=False)
  plan = _import(model, fixtures.MAX_DEEPLAB_S_COCO)
  return model, plan


@pytest.fixture(scope='module')
def axial_r50():
  """A built 1/8-width Axial-R50 for tests that only plan imports."""
  backbone = BACKBONES[fixtures.MAX_DEEPLAB_S_BACKBONE]()
  backbone(tf.zeros([1, 33, 33, 3]))
  return backbone


@pytest.mark.parametrize('folder', sorted(BACKBONES))
def test_backbone_endpoints_equal_deeplab2(folder):
  image, reference = fixtures.reference(folder)
  backbone = BACKBONES[folder]()
  backbone(tf.zeros([1, 33, 33, 3]))
  plan = _import(backbone, folder)
  assert not plan.kept_initial
  assert set(plan.skipped) == {'global_step', '_CHECKPOINTABLE_OBJECT_GRAPH'}
  endpoints = backbone(image, training=False)
  for name in axial_resnet.ENDPOINTS + axial_resnet.PREACTIVATIONS:
    fixtures.assert_close_to_reference(endpoints[name],
                                       reference[f'encoder/{name}'],
                                       f'{folder} {name}')


def test_max_deeplab_s_outputs_equal_deeplab2(max_deeplab_s):
  model, plan = max_deeplab_s
  image, reference = fixtures.reference(fixtures.MAX_DEEPLAB_S_COCO)
  outputs = model(image, training=False)
  for ours, theirs in ((common.MASK_LOGITS, 'pixel_space_mask_logits'),
                       (common.CLASS_LOGITS, 'transformer_class_logits'),
                       (common.PIXEL_EMBEDDINGS,
                        'pixel_space_normalized_feature')):
    fixtures.assert_close_to_reference(outputs[ours],
                                       reference[f'decoder/{theirs}'], ours)
  # Only DeepLab2's auxiliary semantic branch and bookkeeping are left out.
  assert set(plan.skipped.values()) == {
      'checkpoint bookkeeping',
      "DeepLab2's training-only auxiliary semantic branch"}
  assert any(key.startswith('semantic_decoder/') for key in plan.skipped)


def test_max_deeplab_s_at_one_eighth_has_the_fixture_shapes(max_deeplab_s):
  # build_model(width_multiplier=0.125): every element of every inference key
  # of DeepLab2's 1/8-width checkpoint lands in exactly one variable of ours
  # (split tensors such as q/k/v and the stacked norms are covered by their
  # parts; the 128 memory slots by the 128 centers).
  _, plan = max_deeplab_s
  checkpoint = _shapes(fixtures.MAX_DEEPLAB_S_COCO)
  assigned = {}
  for assignment in plan.assignments:
    assigned[assignment.key] = assigned.get(assignment.key, 0) + int(
        np.prod(assignment.variable.shape))
  assert assigned == {key: int(np.prod(checkpoint.shapes[key]))
                      for key in assigned}
  assert len({id(a.variable) for a in plan.assignments}) == len(
      plan.assignments)


def test_model_garden_encoder_prefix_and_optimizer_slots(tmp_path):
  # A Model Garden training checkpoint: the encoder under 'backbone/_encoder/',
  # with optimizer slots and iterations.
  source = fixtures.checkpoint_path(fixtures.RESNET50)
  reader = tf.train.load_checkpoint(source)
  names, tensors = [], []
  for key, _ in tf.train.list_variables(source):
    if key.startswith('encoder/'):
      names.append('model/backbone/_encoder/' + key[len('encoder/'):])
      tensors.append(reader.get_tensor(key))
  slot = names[0].replace('/.ATTRIBUTES/',
                          '/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/')
  names += [slot, 'optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE']
  tensors += [tensors[0], tf.constant(5, tf.int64)]
  prefix = str(tmp_path / 'ckpt-7')
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[''] * len(names), tensors=tensors)
  backbone = BACKBONES[fixtures.RESNET50]()
  backbone(tf.zeros([1, 33, 33, 3]))
  plan = _import(backbone, fixtures.RESNET50)
  renamed = deeplab2.DeepLab2Checkpoint(prefix)
  renamed_plan = deeplab2.plan_import(backbone, renamed)
  assert renamed.layout == deeplab2.RESNET50
  assert ([a.key for a in renamed_plan.assignments] ==
          [a.key for a in plan.assignments])
  assert sorted(renamed_plan.skipped.values()) == ['optimizer state'] * 2


def test_unknown_layout_names_the_checkpoint(tmp_path):
  prefix = str(tmp_path / 'other')
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=['model/dense/kernel'],
                    shape_and_slices=[''], tensors=[tf.zeros([2, 2])])
  backbone = BACKBONES[fixtures.RESNET50]()
  backbone(tf.zeros([1, 33, 33, 3]))
  with pytest.raises(ValueError, match='other has no known DeepLab2 layout'):
    deeplab2.plan_import(backbone, deeplab2.DeepLab2Checkpoint(prefix))


def _shapes(folder, extra=None):
  shapes = dict(tf.train.list_variables(fixtures.checkpoint_path(folder)))
  shapes.update(extra or {})
  return deeplab2.CheckpointKeys(shapes, folder)


def test_unmapped_inference_key_is_an_error_naming_it():
  backbone = BACKBONES[fixtures.RESNET50]()
  backbone(tf.zeros([1, 33, 33, 3]))
  keys = _shapes(fixtures.RESNET50,
                 {'encoder/_stage6/_block1/_conv/kernel': [1, 1, 8, 8]})
  with pytest.raises(ValueError, match=r'encoder/_stage6/_block1/_conv/kernel'):
    deeplab2.plan_import(backbone, keys)


def test_shape_mismatch_names_the_variable():
  backbone = axial_resnet.resnet50(width_multiplier=2 * W, output_stride=32,
                                   stem_type=stems.RESNET)
  backbone(tf.zeros([1, 33, 33, 3]))
  with pytest.raises(ValueError, match=r'Shape mismatch: .*stem/conv1/conv/kernel.* '
                     r'0\.5x as wide .*build_model\.width_multiplier'):
    deeplab2.plan_import(backbone, _shapes(fixtures.RESNET50))


def test_stem_mismatch_is_an_error():
  backbone = axial_resnet.resnet50(width_multiplier=W, output_stride=32)
  backbone(tf.zeros([1, 33, 33, 3]))
  with pytest.raises(ValueError, match='ResNet .7x7. stem'):
    deeplab2.plan_import(backbone, _shapes(fixtures.RESNET50))


def test_missing_key_for_our_variable_is_an_error(axial_r50):
  keys = _shapes(fixtures.MAX_DEEPLAB_S_BACKBONE)
  del keys.shapes['encoder/_stage5/_block3/_attention/_width_axis/qkv_kernel']
  with pytest.raises(ValueError, match='stage5_block3/width_axis/qkv_kernel'):
    deeplab2.plan_import(axial_r50, keys)


def test_backbone_of_the_coco_checkpoint_initialises_cmt_deeplab_s_backbone(
    axial_r50):
  # MaX-S's COCO encoder minus its transformer layers is the Axial-R50.
  plan = deeplab2.plan_import(
      axial_r50, _shapes(fixtures.MAX_DEEPLAB_S_COCO), deeplab2.BACKBONE)
  assert not plan.kept_initial
  assert plan.skipped['encoder/memory_feature'].startswith('outside')
  assert plan.skipped[
      'encoder/_stage5/_block1_transformer/_pixel_conv3_bn/_conv/kernel'
  ].startswith('outside')


def test_other_class_count_needs_all_but_class_head():
  model = builder.build_model('max_deeplab_s', num_classes=19, num_clusters=64,
                              width_multiplier=W)
  model(tf.zeros([1, 33, 33, 3]), training=False)
  keys = _shapes(fixtures.MAX_DEEPLAB_S_COCO)
  with pytest.raises(ValueError, match="class counts differ.*all_but_class_head"):
    deeplab2.plan_import(model, keys, deeplab2.ALL)
  plan = deeplab2.plan_import(model, keys, deeplab2.ALL_BUT_CLASS_HEAD)
  classifier = model.heads.class_head.weights
  kept = {v.name for v in plan.kept_initial}
  assert kept == {v.name for v in classifier if 'classifier' in v.name}
  assert plan.skipped['transformer_class_head/_conv/kernel'].startswith(
      'the class-logit layer')
  # The 64 centers are the first 64 of the 128 memory slots.
  centers = [a for a in plan.assignments if a.key == 'encoder/memory_feature']
  assert centers[0].variable.shape == (64, 32)


def test_a_checkpoint_is_found_in_its_folder(tmp_path):
  # An extracted model-zoo folder stands for the checkpoint it holds.
  folder = os.path.dirname(fixtures.checkpoint_path(fixtures.RESNET50))
  assert deeplab2.DeepLab2Checkpoint(folder).path.endswith('ckpt-1')
  with pytest.raises(ValueError, match='no such checkpoint'):
    deeplab2.DeepLab2Checkpoint(str(tmp_path / 'missing'))
  for name in ('a', 'b'):
    (tmp_path / f'{name}.index').write_text('')
  with pytest.raises(ValueError, match='holds 2 checkpoints'):
    deeplab2.find_checkpoint(str(tmp_path))
