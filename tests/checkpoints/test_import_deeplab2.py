"""The importer CLI writes run directories that the other commands accept."""
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf import import_deeplab2
from cmt_deeplab_tf.checkpoints import deeplab2
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import train_lib
from tests.checkpoints import fixtures

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(*bindings):
  experiment.parse_gin([], list(bindings))


def _max_deeplab_s_bindings(fixture_set):
  return ("ExperimentConfig.dataset_name = 'coco'",
          "build_model.name = 'max_deeplab_s'",
          f'build_model.width_multiplier = {fixture_set.width}',
          'build_model.transformer_expansion = '
          f'{fixture_set.transformer_expansion}')


def test_imported_max_deeplab_s_run_reproduces_deeplab2(tmp_path, fixture_set):
  model_dir = str(tmp_path / 'run')
  _parse(*_max_deeplab_s_bindings(fixture_set))
  plan = import_deeplab2.import_checkpoint(
      fixture_set.checkpoint_path(fixtures.MAX_DEEPLAB_S_COCO), model_dir)
  # Only the training-only semantic head keeps its initial values.
  assert plan.kept_initial and all(
      '/semantic_head/' in v.name for v in plan.kept_initial)
  summary = deeplab2.summary(plan)
  semantic = sum(int(np.prod(v.shape)) for v in plan.kept_initial)
  assert (f'Kept initial values: {len(plan.kept_initial)} variables.\n'
          f'  semantic_head: {len(plan.kept_initial)} variables, {semantic:,} '
          'parameters') in summary
  assert '  mapped  ' not in summary and '    initial ' not in summary
  verbose = deeplab2.summary(plan, verbose=True)
  assert 'skipped semantic_decoder/' in verbose
  assert 'initial ' in verbose and 'mapped  encoder/memory_feature' in verbose
  assert verbose.count('    initial ') == len(plan.kept_initial)
  assert os.path.basename(tf.train.latest_checkpoint(model_dir)) == 'ckpt-0'
  # What export, predict and visualize load: the run's config and checkpoint.
  gin.clear_config()
  model, _, info = export_lib.load_model_from_model_dir(model_dir)
  assert info.num_classes == 133
  image, reference = fixture_set.reference(fixtures.MAX_DEEPLAB_S_COCO)
  outputs = model(image, training=False)
  fixtures.assert_close_to_reference(
      outputs[common.MASK_LOGITS], reference['decoder/pixel_space_mask_logits'],
      'mask_logits')
  with pytest.raises(ValueError, match='already holds a checkpoint'):
    _parse(*_max_deeplab_s_bindings(fixture_set))
    import_deeplab2.import_checkpoint(
        fixture_set.checkpoint_path(fixtures.MAX_DEEPLAB_S_COCO), model_dir)


@pytest.mark.slow
def test_command_line_then_train_resumes_and_evaluates(tfrecord_dir, tmp_path,
                                                       fixture_set):
  """The CLI, then `train` fine-tunes from the run dir (full trainer state)."""
  model_dir = str(tmp_path / 'run')
  params = ["ExperimentConfig.dataset_name = 'synthetic'",
            "build_model.name = 'cmt_deeplab_s'",
            "AxialResNet.activation = 'gelu'",
            'build_model.num_clusters = 8',
            'build_model.decoder_blocks = (1, 1, 1)',
            f'build_model.width_multiplier = {fixture_set.width}']
  result = subprocess.run(
      [sys.executable, '-m', 'cmt_deeplab_tf.import_deeplab2',
       f'--checkpoint={fixture_set.checkpoint_path(fixtures.AXIAL_RESNET50_GELU)}',
       f'--model_dir={model_dir}'] + [f'--gin_param={p}' for p in params],
      cwd=REPOSITORY, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Layout axial_resnet50: mapped' in result.stdout
  assert 'Kept initial values' in result.stdout
  _parse(*params,
         f"ExperimentConfig.train_file_pattern = '{tfrecord_dir}/train-*'",
         f"ExperimentConfig.eval_file_pattern = '{tfrecord_dir}/val-*'",
         'ExperimentConfig.train_batch_size = 2',
         'ExperimentConfig.train_crop_size = (65, 65)',
         'ExperimentConfig.eval_crop_size = (97, 97)',
         'ExperimentConfig.max_num_masks = 8', 'ExperimentConfig.train_steps = 1',
         'ExperimentConfig.steps_per_loop = 1', 'ExperimentConfig.eval_steps = 1',
         'OptimizerConfig.warmup_steps = 0')
  before = tf.train.load_checkpoint(model_dir)
  stem_key = 'model/backbone/stem/_convs/0/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE'
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_lib.run('train', model_dir, strategy)
  after = tf.train.load_checkpoint(model_dir)
  assert after.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 1
  assert not np.array_equal(before.get_tensor(stem_key),
                            after.get_tensor(stem_key))
  train_lib.run('eval', model_dir, strategy)
  assert os.path.exists(os.path.join(model_dir, 'eval', 'results-1.json'))
