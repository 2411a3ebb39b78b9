"""Every key of the published (full-size) DeepLab2 checkpoints maps onto our models.

`full_size_variables.json` (written by scripts/make_deeplab2_fixtures.py with
DeepLab2's code; in each fixture set) lists each key and shape of the four
full-size layouts (no weights), `full_size_kmax_variables.json` those of the
two kMaX-DeepLab COCO checkpoints. Each key must land, element for element, in variables of
our full-size model, except the keys listed in `EXCEPTIONS` with their reason
(for kMaX-DeepLab only the bookkeeping: its 'aspp' semantic branch takes
DeepLab2's). The variables are built on a 17x17 (kMaX: 33x33) input: the
relative positional encodings of axial attention have a fixed span, so no shape
depends on the input size.
"""
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.checkpoints import deeplab2
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import max_deeplab
from cmt_deeplab_tf.modeling import parameter_count
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import stems
from tests.checkpoints import fixtures

# Key prefix -> why no variable of ours takes it.
BOOKKEEPING = {
    '_CHECKPOINTABLE_OBJECT_GRAPH': 'checkpoint bookkeeping',
    'global_step': 'checkpoint bookkeeping',
}
EXCEPTIONS = {
    **BOOKKEEPING,
    'semantic_decoder/': "MaX-DeepLab-S: DeepLab2's training-only auxiliary ASPP "
                         'decoder; our auxiliary semantic head reads the '
                         'stride-4 decoder features instead',
    'semantic_head_without_last_layer/': 'the same auxiliary branch',
    'semantic_last_layer/': 'the same auxiliary branch',
}
_BUILD_INPUT = tf.zeros([1, 17, 17, 3])


def _listing(fixture_set, name=fixtures.FULL_SIZE_VARIABLES):
  with open(fixture_set.file(name)) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def full_size(fixture_set):
  return _listing(fixture_set)


@pytest.fixture(scope='module')
def max_deeplab_s():
  """Our full-size MaX-DeepLab-S at its default (published) widths."""
  model = max_deeplab.build_max_deeplab(
      axial_resnet.axial_r50(), num_classes=133, num_clusters=128,
      transformer_filters=max_deeplab.TRANSFORMER_FILTERS)
  model(_BUILD_INPUT, training=False)
  return model


def _normalised(entry):
  return deeplab2.CheckpointKeys(entry, 'full_size_variables.json').shapes


def _memory_widths(shapes):
  ffn = 'encoder/_stage5/_block1_transformer/_memory_ffn_conv1_bn_act/_conv/kernel'
  return dict(memory_channels=shapes['encoder/memory_feature'][-1],
              feed_forward_channels=shapes[ffn][-1],
              head_feature_channels=shapes[
                  'encoder/_class_feature_extra/_conv/kernel'][-1])


def _assert_covered(model, full_size, layout_folder, modules=deeplab2.ALL,
                    exceptions=EXCEPTIONS):
  keys = deeplab2.CheckpointKeys(full_size[layout_folder], layout_folder)
  plan = deeplab2.plan_import(model, keys, modules)
  mapped_elements = {}
  for mapping in plan.mappings:
    mapped_elements[mapping.key] = mapped_elements.get(mapping.key, 0) + int(
        np.prod(mapping.variable.shape))
  for key, shape in keys.shapes.items():
    if key in plan.skipped:
      assert any(key.startswith(p) for p in exceptions), (key, plan.skipped[key])
    else:
      assert mapped_elements.get(key) == int(np.prod(shape)), key
  return plan


def test_max_deeplab_s_coco_maps_onto_max_deeplab_s(max_deeplab_s, full_size):
  plan = _assert_covered(max_deeplab_s, full_size, fixtures.MAX_DEEPLAB_S_COCO)
  assert not plan.kept_initial  # Built for inference: no semantic head yet.


@pytest.mark.parametrize('folder', [fixtures.MAX_DEEPLAB_S_BACKBONE,
                                    fixtures.AXIAL_RESNET50_GELU])
def test_axial_resnet50_checkpoints_map_onto_the_axial_r50(
    max_deeplab_s, full_size, folder):
  # The Axial-R50 of max_deeplab_s is the backbone of cmt_deeplab_s(_gelu)
  # (the activation is no variable).
  plan = _assert_covered(max_deeplab_s.backbone, full_size, folder)
  assert not plan.kept_initial


def test_resnet50_maps_onto_the_cmt_deeplab_r50_backbone(full_size):
  backbone = axial_resnet.resnet50(stem_type=stems.RESNET)
  backbone(_BUILD_INPUT)
  plan = _assert_covered(backbone, full_size, fixtures.RESNET50)
  assert not plan.kept_initial


def test_max_deeplab_s_layout_has_the_published_widths(full_size):
  # DeepLab2's MaX-DeepLab-S: memory 256, dual-path feed-forward 2048, class and
  # mask features 256; stem, stage 5 and pixel-space head at full width.
  shapes = _normalised(full_size[fixtures.MAX_DEEPLAB_S_COCO])
  assert _memory_widths(shapes) == dict(
      memory_channels=256, feed_forward_channels=2048, head_feature_channels=256)
  assert shapes['encoder/_stem/_conv1_bn_act/_conv/kernel'] == (3, 3, 3, 64)
  assert shapes['encoder/_stage5/_block1/_conv3_bn/_conv/kernel'] == (
      1, 1, 1024, 2048)
  assert shapes['pixel_space_head/final_conv/kernel'] == (1, 1, 256, 128)


def test_the_committed_listing_equals_the_shared_one():
  fixtures.SHARED.require()
  assert _listing(fixtures.COMMITTED) == _listing(fixtures.SHARED)


# kMaX-DeepLab listing folder -> our named config.
_KMAX_MODELS = {fixtures.KMAX_RESNET50_COCO: 'kmax_deeplab_r50',
                fixtures.KMAX_AXIAL_RESNET50_COCO: 'kmax_deeplab_axial_r50'}
# DeepLab2's trainable parameters of its COCO kMaX-DeepLab models in training
# mode (their auxiliary semantic branch included), as DeepLab2 counts them.
_KMAX_DEEPLAB2_TRAINABLE = {fixtures.KMAX_RESNET50_COCO: 72_436_862,
                            fixtures.KMAX_AXIAL_RESNET50_COCO: 90_272_254}
_NOT_TRAINABLE = re.compile(r'(moving_mean|moving_variance)$|^global_step$|'
                            r'^_CHECKPOINTABLE_OBJECT_GRAPH$')
_SEMANTIC_BRANCH = re.compile(
    r'^(semantic_decoder|semantic_head_without_last_layer|semantic_last_layer)/')


@pytest.fixture(scope='module', params=sorted(_KMAX_MODELS))
def kmax(request):
  """(listing folder, its keys, our full-size model built for training)."""
  full_size = _listing(fixtures.COMMITTED, fixtures.FULL_SIZE_KMAX_VARIABLES)
  model = builder.build_model(_KMAX_MODELS[request.param], num_classes=133,
                              num_clusters=128)
  model(tf.zeros([1, 33, 33, 3]), training=True)  # The semantic branch too.
  return request.param, full_size, model


def test_kmax_coco_checkpoints_map_onto_the_kmax_configs(kmax):
  folder, full_size, model = kmax
  plan = _assert_covered(model, full_size, folder, exceptions=BOOKKEEPING)
  assert not plan.kept_initial  # The training-only semantic branch included.
  assert not [key for key in plan.skipped if _SEMANTIC_BRANCH.search(key)]
  # One layout for both: the backbone is told apart by its stem.
  assert plan.layout == deeplab2.KMAX_DEEPLAB


def trainable_elements(shapes):
  """(all, semantic branch) trainable elements of a DeepLab2 key listing."""
  counts = [0, 0]
  for key, shape in _normalised(shapes).items():
    if not _NOT_TRAINABLE.search(key):
      counts[0] += int(np.prod(shape))
      counts[1] += int(np.prod(shape)) if _SEMANTIC_BRANCH.search(key) else 0
  return tuple(counts)


def test_kmax_parameter_count_equals_deeplab2s(kmax):
  """Ours in training = DeepLab2's trainable count; at inference, without the
  semantic branch (the paper's count)."""
  folder, full_size, model = kmax
  total, semantic = trainable_elements(full_size[folder])
  assert total == _KMAX_DEEPLAB2_TRAINABLE[folder]
  counts = parameter_count.parameter_breakdown(model)
  ours = counts[parameter_count.INFERENCE_TOTAL] + counts[
      parameter_count.TRAINING_ONLY]
  assert ours == total == sum(
      int(np.prod(v.shape)) for v in model.trainable_variables), (
          f'{folder}: ours {ours:,} trainable in training mode, DeepLab2 '
          f'{total:,}')
  assert counts[parameter_count.INFERENCE_TOTAL] == total - semantic, (
      f'{folder}: ours {counts[parameter_count.INFERENCE_TOTAL]:,} at '
      f'inference, DeepLab2 {total - semantic:,} without its semantic branch')
