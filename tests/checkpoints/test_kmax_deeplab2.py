"""Imported DeepLab2 kMaX-DeepLab checkpoints reproduce DeepLab2's outputs.

The committed fixtures `kmax_resnet50_coco` and `kmax_axial_resnet50_coco`
(`scripts/make_deeplab2_fixtures.py`) are DeepLab2's COCO kMaX-DeepLab at 1/32
width (k-means layers at 1/8) with random weights, and DeepLab2's predictions
for one image: the final ones, every k-means layer's (its auxiliary
predictor's, at the layer's stride) and the auxiliary semantic branch's (ASPP
decoder and head, run at inference). Tolerance: 1e-4 of each output's scale.
"""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.checkpoints import deeplab2
from cmt_deeplab_tf.modeling import kmax_deeplab
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import stems
from tests.checkpoints import fixtures

KMAX_RESNET50 = fixtures.KMAX_RESNET50_COCO
KMAX_AXIAL_RESNET50 = fixtures.KMAX_AXIAL_RESNET50_COCO
_SET = fixtures.COMMITTED
_TRANSFORMER_FILTERS = 16  # 128 * DeepLab2's fixture expansion 1/8.
_BACKBONES = {
    KMAX_RESNET50: lambda w: axial_resnet.resnet50(
        width_multiplier=w, output_stride=32, stem_type=stems.RESNET),
    KMAX_AXIAL_RESNET50: lambda w: axial_resnet.axial_r50(
        width_multiplier=w, output_stride=32, activation=activations.GELU),
}
_OUTPUTS = {  # Ours -> DeepLab2's prediction keys.
    common.CLASS_LOGITS: 'transformer_class_logits',
    common.MASK_LOGITS: 'pixel_space_mask_logits',
    common.PIXEL_EMBEDDINGS: 'pixel_space_normalized_feature',
}


def _build(folder, semantic_head=kmax_deeplab.ASPP, training=True):
  """Our kMaX-DeepLab at the fixture's widths, built."""
  width = _SET.width
  model = kmax_deeplab.build_network(
      _BACKBONES[folder](width), num_classes=133, num_clusters=128,
      width_multiplier=width, transformer_filters=_TRANSFORMER_FILTERS,
      semantic_head=semantic_head)
  if training:  # Builds the semantic branch.
    model(tf.zeros([1, 49, 49, 3]), training=True)
  model(tf.zeros([1, 49, 49, 3]), training=False)
  return model


def _model(folder):
  """Our kMaX-DeepLab at the fixture's widths, built, the fixture imported."""
  model = _build(folder)
  checkpoint = deeplab2.DeepLab2Checkpoint(_SET.checkpoint_path(folder))
  plan = deeplab2.plan_import(model, checkpoint)
  deeplab2.apply_plan(plan, checkpoint)
  return model, plan


@pytest.fixture(scope='module', params=sorted(_BACKBONES))
def imported(request):
  """(fixture folder, our imported model, the import plan)."""
  return (request.param,) + _model(request.param)


def test_kmax_outputs_equal_deeplab2(imported):
  folder, model, plan = imported
  assert plan.layout == deeplab2.KMAX_DEEPLAB
  assert not plan.kept_initial  # The semantic branch too.
  assert set(plan.skipped.values()) == {'checkpoint bookkeeping'}
  image, reference = _SET.reference(folder)
  outputs, layers = model.forward(image, training=False)
  for ours, theirs in _OUTPUTS.items():
    fixtures.assert_close_to_reference(outputs[ours],
                                       reference[f'kmax/{theirs}'],
                                       f'{folder} {ours}')
  assert len(layers) == 6
  for index, layer_outputs in enumerate(layers):
    for ours, theirs in _OUTPUTS.items():
      fixtures.assert_close_to_reference(
          layer_outputs[ours], reference[f'kmax/layer{index}/{theirs}'],
          f'{folder} layer {index} {ours}')


def test_kmax_semantic_logits_equal_deeplab2(imported):
  folder, model, _ = imported
  image, reference = _SET.reference(folder)
  outputs, _ = model.forward(image, training=False, with_semantic=True)
  # DeepLab2: one logit per COCO label, void (label 0) first; ours: class k
  # (label k + 1) at k, void last.
  theirs = reference['kmax/semantic_logits']
  fixtures.assert_close_to_reference(
      outputs[common.SEMANTIC_LOGITS],
      np.concatenate([theirs[..., 1:], theirs[..., :1]], axis=-1),
      f'{folder} {common.SEMANTIC_LOGITS}')


@pytest.mark.parametrize('semantic_head,training,reason', [
    (kmax_deeplab.PIXEL_DECODER, True, "semantic head is 'pixel_decoder'"),
    (kmax_deeplab.ASPP, False, 'not built')])
def test_an_unmatched_semantic_branch_is_skipped_with_its_reason(
    semantic_head, training, reason):
  model = _build(KMAX_RESNET50, semantic_head, training)
  checkpoint = deeplab2.DeepLab2Checkpoint(_SET.checkpoint_path(KMAX_RESNET50))
  plan = deeplab2.plan_import(model, checkpoint)
  semantic = {key: why for key, why in plan.skipped.items()
              if key.startswith('semantic_')}
  assert semantic and all(reason in why for why in semantic.values())
  assert {k.split('/')[0] for k in semantic} == {
      'semantic_decoder', 'semantic_head_without_last_layer',
      'semantic_last_layer'}
  kept = {v.name.split('/')[1] for v in plan.kept_initial}
  assert kept == ({'semantic_head'} if training else set())


def test_kmax_layout_is_detected_and_backbone_importable():
  """modules='backbone' restores only the encoder of a kMaX checkpoint."""
  backbone = _BACKBONES[KMAX_RESNET50](_SET.width)
  backbone(tf.zeros([1, 33, 33, 3]))
  checkpoint = deeplab2.DeepLab2Checkpoint(_SET.checkpoint_path(KMAX_RESNET50))
  plan = deeplab2.plan_import(backbone, checkpoint, deeplab2.BACKBONE)
  assert not plan.kept_initial
  assert all(m.key.startswith('encoder/') for m in plan.mappings)
  assert any(k.startswith('transformer_decoder/') for k in plan.skipped)


def test_all_but_class_head_reinitialises_every_class_logit_layer(imported):
  folder, model, _ = imported
  checkpoint = deeplab2.DeepLab2Checkpoint(_SET.checkpoint_path(folder))
  plan = deeplab2.plan_import(model, checkpoint, deeplab2.ALL_BUT_CLASS_HEAD)
  kept = [v.name for v in plan.kept_initial]
  # The final classifier, the six k-means layers' predictors' classifiers and
  # the semantic head's last layer.
  assert len(kept) == 2 * 8
  assert all('/class_head/classifier/' in name or
             '/semantic_head/conv_head/output/' in name for name in kept)
  assert sum('/semantic_head/' in name for name in kept) == 2
