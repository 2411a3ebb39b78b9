"""The package as a user gets it: a wheel, installed into a fresh environment.

The wheel is built from a copy of the source tree and installed (not editable,
no dependencies) into a new virtual environment that sees this environment's
dependencies through a path file (so not its editable install of the
package). Every command then runs from an unrelated folder without PYTHONPATH,
so the code and the gin configs can only come from the installed copy.
Building and installing take about a minute, so the module is `slow`.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.slow
_SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHIPPED = ('setup.py', 'cmt_deeplab_tf', 'gin_configs')


def _run(command, cwd, env):
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, (command, result.stdout[-2000:],
                                  result.stderr[-4000:])
  return result.stdout


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(python of the fresh environment, its site-packages, environment, work dir)."""
  root = tmp_path_factory.mktemp('install')
  source = root / 'source'
  source.mkdir()
  for name in _SHIPPED:
    path = os.path.join(_SOURCE, name)
    if os.path.isdir(path):
      shutil.copytree(path, source / name,
                      ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(path, source / name)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w',
        str(root / 'dist'), str(source)], cwd=root, env=env)
  (wheel,) = os.listdir(root / 'dist')
  venv = root / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], cwd=root,
       env=env)
  python = str(venv / 'bin' / 'python')
  site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
               '["purelib"])'], cwd=root, env=env).strip()
  # The dependencies of this environment; a path file's entries are not site
  # folders, so their own path files (the editable install's) are not run.
  with open(os.path.join(site, 'dependencies.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  _run([sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps',
        '-q', str(root / 'dist' / wheel)], cwd=root, env=env)
  work = root / 'elsewhere'
  work.mkdir()
  return python, site, env, str(work)


def test_installed_copy_runs_and_lists_its_configs(installed):
  python, site, env, work = installed
  located = _run([python, '-c', 'import cmt_deeplab_tf, os; from cmt_deeplab_tf '
                  'import config_files; print(os.path.dirname('
                  'cmt_deeplab_tf.__file__)); print(config_files.config_root())'],
                 cwd=work, env=env).split()
  assert located == [os.path.join(site, 'cmt_deeplab_tf'),
                     os.path.join(site, 'cmt_deeplab_tf', 'gin_configs')]
  listing = _run([python, '-m', 'cmt_deeplab_tf.train', '--list_configs'],
                 cwd=work, env=env)
  assert 'coco/cmt_deeplab_s.gin\n    CMT-DeepLab-S (Axial-R50) on COCO: ' \
         'supplement Table 1 row "CMT-DeepLab, Axial-R50, 94.9M, 53.0 PQ"' in listing
  assert 'synthetic/demo.gin' in listing
  # A user's own file includes a shipped config by name.
  with open(os.path.join(work, 'mine.gin'), 'w') as f:
    f.write("include 'coco/cmt_deeplab_s.gin'\nExperimentConfig.train_steps = 7\n")
  parsed = _run([python, '-c', 'import gin; from cmt_deeplab_tf.training import '
                 'experiment; experiment.parse_gin(["mine.gin"], []); '
                 'print(gin.query_parameter("build_model.name"), '
                 'experiment.ExperimentConfig().train_steps)'], cwd=work, env=env)
  assert parsed.split() == ['cmt_deeplab_s', '7']


def test_installed_copy_trains_exports_and_predicts_the_demo(installed):
  python, _, env, work = installed
  module = lambda name, *args: _run([python, '-m', name, *args], cwd=work,
                                    env=env)
  module('cmt_deeplab_tf.data.synthetic', '--output_dir=data', '--num_train=4',
         '--num_val=2', '--height=64', '--width=64')
  for split in ('train', 'val'):
    module('cmt_deeplab_tf.data.convert_coco', '--dataset=synthetic',
           f'--split={split}', f'--image_dir=data/{split}',
           f'--panoptic_json=data/annotations/panoptic_{split}.json',
           '--output_dir=records', '--num_shards=1', '--num_workers=1')
  module('cmt_deeplab_tf.train', '--mode=train', '--model_dir=run',
         '--gin_file=synthetic/demo.gin',
         "--gin_param=ExperimentConfig.train_file_pattern='records/train-*'",
         "--gin_param=ExperimentConfig.eval_file_pattern='records/val-*'",
         '--gin_param=ExperimentConfig.train_batch_size=2',
         '--gin_param=ExperimentConfig.train_crop_size=(65, 65)',
         '--gin_param=ExperimentConfig.train_steps=2',
         '--gin_param=ExperimentConfig.steps_per_loop=2',
         '--gin_param=OptimizerConfig.warmup_steps=0')
  assert os.path.exists(os.path.join(work, 'run', 'ckpt-2.index'))
  module('cmt_deeplab_tf.export', '--model_dir=run', '--export_dir=exported')
  module('cmt_deeplab_tf.predict', '--saved_model=exported',
         '--image_dir=data/val', '--output_dir=predictions')
  written = sorted(os.listdir(os.path.join(work, 'predictions')))
  images = sorted(os.listdir(os.path.join(work, 'data', 'val')))
  assert len(written) >= len(images) > 0
