"""scripts/make_deeplab2_fixtures.py: its errors, and that it remakes the fixtures.

Remaking them needs a DeepLab2 source checkout with compiled protos: set
DEEPLAB2_PATH to the folder holding `deeplab2/` (the script's docstring says how
to get one); without it that test is skipped.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import script_modules
from tests.checkpoints import fixtures

_SCRIPT = str(script_modules.SCRIPTS / 'make_deeplab2_fixtures.py')


def _load_script():
  return script_modules.load('make_deeplab2_fixtures')


def test_a_folder_without_deeplab2_is_an_error_naming_the_flag(tmp_path):
  with pytest.raises(ValueError, match=r'--deeplab2_path=.* has no '
                                       r'deeplab2/config_pb2\.py'):
    _load_script()._import_deeplab2(str(tmp_path))


def test_the_committed_fixtures_have_the_generators_layouts_and_widths():
  script = _load_script()
  assert sorted(script.LAYOUTS) == sorted(
      name for name in os.listdir(fixtures.COMMITTED.path)
      if name not in script.FULL_SIZE_FILES)
  assert set(script.FULL_SIZE_FILES) == {fixtures.FULL_SIZE_VARIABLES,
                                         fixtures.FULL_SIZE_KMAX_VARIABLES}
  assert (script.WIDTH, script.TRANSFORMER_EXPANSION) == (
      fixtures.COMMITTED.width, fixtures.COMMITTED.transformer_expansion)


@pytest.mark.slow
def test_the_script_remakes_the_committed_fixtures(tmp_path):
  deeplab2_path = os.environ.get('DEEPLAB2_PATH')
  if not deeplab2_path:
    pytest.skip('Set DEEPLAB2_PATH to a DeepLab2 checkout to remake the fixtures.')
  subprocess.run([sys.executable, _SCRIPT, f'--deeplab2_path={deeplab2_path}',
                  f'--output_dir={tmp_path}'], check=True, capture_output=True,
                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  committed = fixtures.COMMITTED.path
  for name in _load_script().FULL_SIZE_FILES:
    with open(os.path.join(tmp_path, name)) as f:
      remade = json.load(f)
    with open(os.path.join(committed, name)) as f:
      assert remade == json.load(f), name
  for layout in _load_script().LAYOUTS:
    ours = tf.train.load_checkpoint(os.path.join(tmp_path, layout, 'ckpt-1'))
    theirs = tf.train.load_checkpoint(os.path.join(committed, layout, 'ckpt-1'))
    shapes = ours.get_variable_to_shape_map()
    assert shapes == theirs.get_variable_to_shape_map(), layout
    for key in shapes:
      if key != '_CHECKPOINTABLE_OBJECT_GRAPH':
        np.testing.assert_array_equal(ours.get_tensor(key),
                                      theirs.get_tensor(key), err_msg=key)
    remade_outputs = np.load(os.path.join(tmp_path, layout, 'reference.npz'))
    committed_outputs = np.load(os.path.join(committed, layout, 'reference.npz'))
    assert sorted(remade_outputs) == sorted(committed_outputs), layout
    for key in committed_outputs:
      np.testing.assert_allclose(remade_outputs[key], committed_outputs[key],
                                 rtol=1e-5, atol=1e-6, err_msg=f'{layout} {key}')
