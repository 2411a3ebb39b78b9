"""Imported DeepLab2 checkpoints reproduce DeepLab2's own outputs.

The fixtures (`fixtures.py`: the committed set and, where present, the larger
shared one) are DeepLab2-made checkpoints with random weights (batch-norm
statistics included) at reduced width and DeepLab2's outputs for one image.
Tolerance: 1e-4 of each output's scale (max |x|), what float32 round-off leaves
after ~50 layers; a mapping error moves outputs by the order of their scale.
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

# Fixture folder -> our backbone as DeepLab2 built it there, at width w.
BACKBONES = {
    fixtures.MAX_DEEPLAB_S_BACKBONE: lambda w: axial_resnet.axial_r50(
        width_multiplier=w, output_stride=16),
    fixtures.AXIAL_RESNET50_GELU: lambda w: axial_resnet.axial_r50(
        width_multiplier=w, output_stride=32, activation=activations.GELU),
    fixtures.RESNET50: lambda w: axial_resnet.resnet50(
        width_multiplier=w, output_stride=32, stem_type=stems.RESNET),
}


def _backbone(folder, fixture_set, width_factor=1):
  """Our built backbone of a fixture folder (at `width_factor` times its width)."""
  backbone = BACKBONES[folder](fixture_set.width * width_factor)
  backbone(tf.zeros([1, 33, 33, 3]))
  return backbone


def _import(model, fixture_set, folder, modules=deeplab2.ALL):
  checkpoint = deeplab2.DeepLab2Checkpoint(fixture_set.checkpoint_path(folder))
  plan = deeplab2.plan_import(model, checkpoint, modules)
  deeplab2.apply_plan(plan, checkpoint)
  return plan


@pytest.fixture(scope='module')
def max_deeplab_s(fixture_set):
  """Our MaX-DeepLab-S at the fixture's widths with the COCO fixture imported."""
  model = builder.build_model('max_deeplab_s', num_classes=133,
                              num_clusters=128, **fixture_set.model_widths())
  model(tf.zeros([1, 33, 33, 3]), training=False)
  plan = _import(model, fixture_set, fixtures.MAX_DEEPLAB_S_COCO)
  return model, plan


@pytest.fixture(scope='module')
def axial_r50(fixture_set):
  """A built Axial-R50 at the fixture's width for tests that only plan imports."""
  return _backbone(fixtures.MAX_DEEPLAB_S_BACKBONE, fixture_set)


@pytest.mark.parametrize('folder', sorted(BACKBONES))
def test_backbone_endpoints_equal_deeplab2(folder, fixture_set):
  image, reference = fixture_set.reference(folder)
  backbone = _backbone(folder, fixture_set)
  plan = _import(backbone, fixture_set, folder)
  assert not plan.kept_initial
  assert set(plan.skipped) == {'global_step', '_CHECKPOINTABLE_OBJECT_GRAPH'}
  endpoints = backbone(image, training=False)
  for name in axial_resnet.ENDPOINTS + axial_resnet.PREACTIVATIONS:
    fixtures.assert_close_to_reference(endpoints[name],
                                       reference[f'encoder/{name}'],
                                       f'{folder} {name}')


def test_max_deeplab_s_outputs_equal_deeplab2(max_deeplab_s, fixture_set):
  model, plan = max_deeplab_s
  image, reference = fixture_set.reference(fixtures.MAX_DEEPLAB_S_COCO)
  outputs = model(image, training=False)
  for ours, theirs in ((common.MASK_LOGITS, 'pixel_space_mask_logits'),
                       (common.CLASS_LOGITS, 'transformer_class_logits'),
                       (common.PIXEL_EMBEDDINGS,
                        'pixel_space_normalized_feature')):
    fixtures.assert_close_to_reference(outputs[ours],
                                       reference[f'decoder/{theirs}'], ours)
  # Only DeepLab2's auxiliary semantic branch and bookkeeping are left out
  # (ours reads the stride-4 decoder; only kMaX's layout maps the branch).
  reasons = set(plan.skipped.values()) - {'checkpoint bookkeeping'}
  assert len(reasons) == 1
  assert reasons.pop().startswith(
      "DeepLab2's training-only auxiliary semantic branch (ours reads the "
      'stride-4 pixel-decoder features')
  assert {key.split('/')[0] for key in plan.skipped
          if plan.skipped[key] != 'checkpoint bookkeeping'} == {
              'semantic_decoder', 'semantic_head_without_last_layer',
              'semantic_last_layer'}


def test_reduced_max_deeplab_s_has_the_fixture_shapes(max_deeplab_s,
                                                      fixture_set):
  # build_model at the fixture's widths: every element of every inference key
  # of DeepLab2's reduced checkpoint lands in exactly one variable of ours
  # (split tensors such as q/k/v and the stacked norms are covered by their
  # parts; the 128 memory slots by the 128 centers).
  _, plan = max_deeplab_s
  checkpoint = _shapes(fixture_set, fixtures.MAX_DEEPLAB_S_COCO)
  mapped_elements = {}
  for mapping in plan.mappings:
    mapped_elements[mapping.key] = mapped_elements.get(mapping.key, 0) + int(
        np.prod(mapping.variable.shape))
  assert mapped_elements == {key: int(np.prod(checkpoint.shapes[key]))
                      for key in mapped_elements}
  assert len({id(a.variable) for a in plan.mappings}) == len(
      plan.mappings)


def test_model_garden_encoder_prefix_and_optimizer_slots(tmp_path, fixture_set):
  # A Model Garden training checkpoint: the encoder under 'backbone/_encoder/',
  # with optimizer slots and iterations.
  source = fixture_set.checkpoint_path(fixtures.RESNET50)
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
  backbone = _backbone(fixtures.RESNET50, fixture_set)
  plan = _import(backbone, fixture_set, fixtures.RESNET50)
  renamed = deeplab2.DeepLab2Checkpoint(prefix)
  renamed_plan = deeplab2.plan_import(backbone, renamed)
  assert renamed.layout == deeplab2.RESNET50
  assert ([a.key for a in renamed_plan.mappings] ==
          [a.key for a in plan.mappings])
  assert sorted(renamed_plan.skipped.values()) == ['optimizer state'] * 2


def test_unknown_layout_names_the_checkpoint(tmp_path, fixture_set):
  prefix = str(tmp_path / 'other')
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=['model/dense/kernel'],
                    shape_and_slices=[''], tensors=[tf.zeros([2, 2])])
  backbone = _backbone(fixtures.RESNET50, fixture_set)
  with pytest.raises(ValueError, match='other has no known DeepLab2 layout'):
    deeplab2.plan_import(backbone, deeplab2.DeepLab2Checkpoint(prefix))


def _shapes(fixture_set, folder, extra=None):
  shapes = dict(tf.train.list_variables(fixture_set.checkpoint_path(folder)))
  shapes.update(extra or {})
  return deeplab2.CheckpointKeys(shapes, folder)


def test_unmapped_inference_key_is_an_error_naming_it(fixture_set):
  backbone = _backbone(fixtures.RESNET50, fixture_set)
  keys = _shapes(fixture_set, fixtures.RESNET50,
                 {'encoder/_stage6/_block1/_conv/kernel': [1, 1, 8, 8]})
  with pytest.raises(ValueError, match=r'encoder/_stage6/_block1/_conv/kernel'):
    deeplab2.plan_import(backbone, keys)


def test_shape_mismatch_names_the_variable(fixture_set):
  backbone = _backbone(fixtures.RESNET50, fixture_set, width_factor=2)
  with pytest.raises(ValueError, match=r'Shape mismatch: .*stem/conv1/conv/kernel.* '
                     r'0\.5x as wide .*build_model\.width_multiplier'):
    deeplab2.plan_import(backbone, _shapes(fixture_set, fixtures.RESNET50))


def test_stem_mismatch_is_an_error(fixture_set):
  backbone = axial_resnet.resnet50(width_multiplier=fixture_set.width,
                                   output_stride=32)
  backbone(tf.zeros([1, 33, 33, 3]))
  with pytest.raises(ValueError, match='ResNet .7x7. stem'):
    deeplab2.plan_import(backbone, _shapes(fixture_set, fixtures.RESNET50))


def test_missing_key_for_our_variable_is_an_error(axial_r50, fixture_set):
  keys = _shapes(fixture_set, fixtures.MAX_DEEPLAB_S_BACKBONE)
  del keys.shapes['encoder/_stage5/_block3/_attention/_width_axis/qkv_kernel']
  with pytest.raises(ValueError, match='stage5_block3/width_axis/qkv_kernel'):
    deeplab2.plan_import(axial_r50, keys)


def test_backbone_of_the_coco_checkpoint_initialises_cmt_deeplab_s_backbone(
    axial_r50, fixture_set):
  # MaX-S's COCO encoder minus its transformer layers is the Axial-R50.
  plan = deeplab2.plan_import(
      axial_r50, _shapes(fixture_set, fixtures.MAX_DEEPLAB_S_COCO),
      deeplab2.BACKBONE)
  assert not plan.kept_initial
  assert plan.skipped['encoder/memory_feature'].startswith('outside')
  assert plan.skipped[
      'encoder/_stage5/_block1_transformer/_pixel_conv3_bn/_conv/kernel'
  ].startswith('outside')


def test_other_class_count_needs_all_but_class_head(fixture_set):
  model = builder.build_model('max_deeplab_s', num_classes=19, num_clusters=64,
                              **fixture_set.model_widths())
  model(tf.zeros([1, 33, 33, 3]), training=False)
  keys = _shapes(fixture_set, fixtures.MAX_DEEPLAB_S_COCO)
  with pytest.raises(ValueError, match="class counts differ.*all_but_class_head"):
    deeplab2.plan_import(model, keys, deeplab2.ALL)
  plan = deeplab2.plan_import(model, keys, deeplab2.ALL_BUT_CLASS_HEAD)
  classifier = model.heads.class_head.weights
  kept = {v.name for v in plan.kept_initial}
  assert kept == {v.name for v in classifier if 'classifier' in v.name}
  assert plan.skipped['transformer_class_head/_conv/kernel'].startswith(
      'the class-logit layer')
  # The 64 centers are the first 64 of the 128 memory slots.
  centers = [a for a in plan.mappings if a.key == 'encoder/memory_feature']
  assert centers[0].variable.shape == (64, round(256 * fixture_set.width))


def test_a_checkpoint_is_found_in_its_folder(tmp_path, fixture_set):
  # An extracted model-zoo folder stands for the checkpoint it holds.
  folder = os.path.dirname(fixture_set.checkpoint_path(fixtures.RESNET50))
  assert deeplab2.DeepLab2Checkpoint(folder).path.endswith('ckpt-1')
  with pytest.raises(ValueError, match='no such checkpoint'):
    deeplab2.DeepLab2Checkpoint(str(tmp_path / 'missing'))
  for name in ('a', 'b'):
    (tmp_path / f'{name}.index').write_text('')
  with pytest.raises(ValueError, match='holds 2 checkpoints'):
    deeplab2.find_checkpoint(str(tmp_path))
