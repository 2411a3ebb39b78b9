"""The shipped gin configs are found by name, on the command line and in includes."""
import os

import gin
import pytest

from cmt_deeplab_tf import config_files
from cmt_deeplab_tf import train
from cmt_deeplab_tf.training import experiment


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_names_are_paths_under_the_config_folder():
  names = config_files.config_names()
  assert 'coco/cmt_deeplab_s.gin' in names and 'synthetic/demo.gin' in names
  root = config_files.config_root()
  for name in names:
    assert config_files.resolve(name) == os.path.join(root, name)
  assert config_files.find('coco/no_such.gin') is None


def test_a_users_file_elsewhere_includes_a_shipped_config_by_name(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Nothing of the source tree is relative to here.
  (tmp_path / 'mine.gin').write_text(
      "include 'coco/max_deeplab_s.gin'\nExperimentConfig.train_steps = 7\n")
  experiment.parse_gin(['mine.gin'], [])
  assert gin.query_parameter('build_model.name') == 'max_deeplab_s'
  config = experiment.ExperimentConfig()
  assert (config.train_steps, config.dataset_name) == (7, 'coco')


def test_a_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'coco').mkdir()
  (tmp_path / 'coco' / 'cmt_deeplab_s.gin').write_text(
      "build_model.name = 'tiny'\n")
  assert config_files.resolve('coco/cmt_deeplab_s.gin') == 'coco/cmt_deeplab_s.gin'


def test_unknown_name_is_an_error_naming_the_flag():
  with pytest.raises(ValueError, match=r'--base_gin=coco/nope\.gin is neither a file '
                                       r'nor a shipped config.*--list_configs'):
    config_files.resolve('coco/nope.gin', '--base_gin')


def test_list_configs_prints_each_config_with_its_paper_row(capsys):
  train.print_configs()
  lines = capsys.readouterr().out.splitlines()
  names, descriptions = lines[0::2], lines[1::2]
  assert names == config_files.config_names()
  listed = dict(zip(names, descriptions))
  assert listed['coco/cmt_deeplab_s.gin'].strip() == (
      'CMT-DeepLab-S (Axial-R50) on COCO: supplement Table 1 row "CMT-DeepLab, '
      'Axial-R50, 94.9M, 53.0 PQ" and Table 2 row "CMT-DeepLab-S, 54 epochs".')
  assert 'Table 4 row "MaX-DeepLab-S, 61.7 PQ' in listed['cityscapes/max_deeplab_s.gin']
  assert all(d.startswith('    ') and len(d) > 40 for d in descriptions)
