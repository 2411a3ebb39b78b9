"""Every command line reports a bad flag, binding or combination as one line.

Each case runs the CLI in a fresh process and checks: exit status 1, exactly one
`Error: ` line on stderr naming the flag / setting, no traceback. The checks
that come from the experiment's settings run before any data or model is built
(the data patterns here match no file, which would be the error otherwise).
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from cmt_deeplab_tf import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = ["--gin_param=build_model.name='tiny'",
         "--gin_param=ExperimentConfig.dataset_name='synthetic'",
         "--gin_param=ExperimentConfig.train_file_pattern='/nonexistent/train-*'"]


def run_cli(module, args, cwd=ROOT, **popen):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-m', f'cmt_deeplab_tf.{module}'] + args,
                        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                        **popen)


def _assert_one_line_error(result, expected):
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error: ')]
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


CASES = [
    ('train', ['--model_dir=/tmp/unused', '--mode=bogus'],
     'flag --mode=bogus: value should be one of'),
    ('train', ['--mode=train'], '--model_dir is required'),
    ('train', ['--model_dir=/tmp/unused', '--gin_param=ExperimentConfig.no_such = 1'],
     "--gin_param='ExperimentConfig.no_such = 1'"),
    ('train', ['--model_dir=/tmp/unused', '--gin_param=ExperimentConfig.steps_per_loop=3'] +
     _TINY, 'ExperimentConfig.summary_interval=100 must be a multiple of '
     'ExperimentConfig.steps_per_loop=3'),
    ('train', ['--model_dir=/tmp/unused',
               '--gin_param=ExperimentConfig.train_crop_size=(100, 100)'] + _TINY,
     "ExperimentConfig.train_crop_size=[100, 100] violates the model's stride"),
    ('train', ['--model_dir=/tmp/unused', '--gin_file=/nonexistent.gin'],
     '--gin_file=/nonexistent.gin is neither a file nor a shipped config'),
    ('export', ['--model_dir=/nonexistent', '--export_dir=/tmp/unused'],
     '--model_dir=/nonexistent does not exist'),
    ('predict', ['--image_dir=/nonexistent', '--output_dir=/tmp/unused'],
     '--image_dir=/nonexistent is not a directory'),
    ('import_deeplab2', ['--checkpoint=/nonexistent/ckpt-1', '--model_dir=/tmp/unused_import',
                         "--gin_param=ExperimentConfig.dataset_name='synthetic'"],
     '/nonexistent/ckpt-1'),
    ('sweep', ['--base_gin=/nonexistent.gin', '--sweep_dir=/tmp/unused'],
     '--base_gin=/nonexistent.gin is neither a file nor a shipped config'),
    ('visualize', ['--model_dir=/nonexistent', '--output_dir=/tmp/unused'],
     'Pass exactly one of --image_dir and --images'),
    ('cost_table', ['--models=no_such_model'], '--models=no_such_model: unknown'),
    ('render_tables', ['--tables=9'], '--tables=9: choose among'),
    ('data.convert_coco', ['--split=train', '--image_dir=/nonexistent',
                           '--panoptic_json=/nonexistent.json', '--output_dir=/tmp/unused'],
     'Panoptic JSON not found: /nonexistent.json'),
    ('data.convert_cityscapes', ['--cityscapes_root=/nonexistent', '--split=val',
                                 '--output_dir=/tmp/unused'],
     'Panoptic JSON not found: /nonexistent/gtFine/cityscapes_panoptic_val.json'),
    ('data.synthetic', ['--output_dir=/tmp/unused', '--height=8'],
     '--height and --width must be >= 32'),
    ('data.verify', ['--file_pattern=/nonexistent/train-*'],
     "file_pattern '/nonexistent/train-*' matches no file"),
]


# Each case starts TensorFlow (seconds): the default suite runs one case per kind
# of check, the slow suite all.
_DEFAULT = {'train-0', 'train-3', 'train-4', 'export-6', 'data.convert_coco-13',
            'data.verify-16'}


def _cases():
  for i, (module, args, expected) in enumerate(CASES):
    name = f'{module}-{i}'
    yield pytest.param(module, args, expected, id=name,
                       marks=() if name in _DEFAULT else pytest.mark.slow)


@pytest.mark.parametrize('module, args, expected', _cases())
def test_bad_input_is_one_line_and_exit_status_1(module, args, expected):
  _assert_one_line_error(run_cli(module, args), expected)


@pytest.mark.slow
def test_verbosity_1_keeps_the_traceback():
  result = run_cli('render_tables', ['--tables=9', '--verbosity=1'])
  assert result.returncode == 1 and 'Traceback' in result.stderr
  assert 'ValueError: --tables=9' in result.stderr


def test_internal_errors_keep_their_traceback_and_ctrl_c_is_130():
  def broken(argv):
    raise RuntimeError('a bug')

  def interrupted(argv):
    raise KeyboardInterrupt

  with pytest.raises(RuntimeError, match='a bug'):
    cli.guarded(broken)([])
  with pytest.raises(SystemExit) as stopped:
    cli.guarded(interrupted)([])
  assert stopped.value.code == cli.INTERRUPT_EXIT_CODE


def test_multi_line_messages_become_one_line():
  assert cli.one_line(ValueError('first\n  second\n')) == 'first; second'


@pytest.mark.slow
def test_ctrl_c_on_continuous_eval_is_one_line_and_130(tfrecord_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  process = subprocess.Popen(
      [sys.executable, '-m', 'cmt_deeplab_tf.train', '--mode=continuous_eval',
       f'--model_dir={tmp_path}', "--gin_param=build_model.name='tiny'",
       '--gin_param=build_model.num_clusters=8',
       f"--gin_param=ExperimentConfig.eval_file_pattern='{tfrecord_dir}/val-*'",
       '--gin_param=ExperimentConfig.eval_crop_size=(97, 97)'],
      stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
  lines = []
  for line in process.stderr:  # Waits until the evaluator waits for checkpoints.
    lines.append(line)
    if 'Evaluating each new checkpoint' in line:
      break
  time.sleep(1)
  process.send_signal(signal.SIGINT)
  rest = process.communicate(timeout=60)[1]
  assert process.returncode == cli.INTERRUPT_EXIT_CODE, ''.join(lines) + rest
  assert rest.strip().splitlines()[-1] == 'Interrupted.' and 'Traceback' not in rest
