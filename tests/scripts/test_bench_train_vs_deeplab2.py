"""scripts/bench_train_vs_deeplab2.py: the settings it measures, and its errors.

Its end-to-end run builds DeepLab2's full-size MaX-DeepLab-S (DEEPLAB2_PATH, and
minutes), so it is not in the tiny-size smoke runs; the peer itself is tested in
tests/analysis/test_deeplab2_peer.py.
"""
import os
import pathlib
import subprocess
import sys

import gin
import pytest
from absl import app

from tests import script_modules

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SCRIPT = script_modules.SCRIPTS / 'bench_train_vs_deeplab2.py'


def _script():
  return script_modules.load('bench_train_vs_deeplab2')


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _config(tmp_path, *lines):
  path = tmp_path / 'policy.gin'
  path.write_text('\n'.join(["include 'coco/base.gin'", *lines]) + '\n')
  return str(path)


def test_each_variant_is_a_labelled_setting_and_an_unknown_one_is_refused(tmp_path):
  path = _config(tmp_path, "build_model.name = 'max_deeplab_s'",
                 "build_model.recompute = 'heads'", 'PanopticLoss.recompute = False')
  steps = _script().settings([path], ['shipped', 'none', 'all'])
  assert [step[1:] for step in steps] == [('max_deeplab_s', 'heads', False),
                                           ('max_deeplab_s', 'none', False),
                                           ('max_deeplab_s', 'all', True)]
  assert len({step[0] for step in steps}) == 3
  with pytest.raises(app.UsageError, match="--variants: unknown \\['some'\\]"):
    _script().settings([path], ['shipped', 'some'])


def test_the_script_without_deeplab2_names_the_flag(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(ROOT))
  for arguments, message in (([], '--deeplab2_path is required'),
                             ([f'--deeplab2_path={tmp_path}'],
                              f'--deeplab2_path={tmp_path} has no deeplab2/config_pb2.py')):
    process = subprocess.run([sys.executable, str(_SCRIPT), *arguments], cwd=tmp_path,
                             env=env, capture_output=True, text=True, check=False)
    assert process.returncode != 0
    assert message in process.stderr, process.stderr[-2000:]
