"""Tables 1 and 4 of the supplement from small eval JSON files."""
import json
import os

import pytest

from cmt_deeplab_tf import render_tables
from cmt_deeplab_tf.analysis import paper_tables


def _write_results(model_dir, step, **values):
  os.makedirs(os.path.join(model_dir, 'eval'), exist_ok=True)
  path = os.path.join(model_dir, 'eval', f'results-{step}.json')
  with open(path, 'w') as f:
    json.dump(dict(values, step=step), f)
  return path


def _rows(markdown):
  """The table rows as lists of cells (header and separator excluded)."""
  lines = [line for line in markdown.splitlines() if line.startswith('| ')]
  return [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[1:]]


@pytest.fixture
def model_dir(tmp_path):
  """A model dir with results at steps 250 and 1000 (numeric, not lexical, order)."""
  directory = str(tmp_path / 'run')
  _write_results(directory, 250, pq=1.0, pq_th=1.0, pq_st=1.0, sq=1.0, rq=1.0,
                 miou=1.0)
  _write_results(directory, 1000, pq=12.34, pq_th=45.66, pq_st=8.94, sq=70.04,
                 rq=17.6, miou=33.333)
  return directory


def test_table1_our_row_from_the_latest_results_then_the_paper_rows(model_dir):
  table = paper_tables.render_table1([f'mine:R50:1.0M:{model_dir}'])
  rows = _rows(table)
  assert rows[0] == ['ours, step 1000', 'mine', 'R50', '1.0M', '12.3', '45.7',
                     '8.9', '-', '-', '-', '-', '-']
  paper_rows = rows[1:]
  assert len(paper_rows) == 11 and all(row[0] == 'paper' for row in paper_rows)
  # Copied by hand from supplement Table 1.
  assert ['paper', 'CMT-DeepLab', 'Axial-R50 ‡', '94.9M', '53.0', '57.7', '45.9',
          '53.4', '58.3', '46.0', '83.0', '63.6'] in paper_rows
  assert ['paper', 'MaX-DeepLab-S', 'MaX-S', '61.9M', '48.4', '53.0', '41.5',
          '49.0', '54.0', '41.6', '-', '-'] in paper_rows
  assert ['paper', 'K-Net †', 'R101-FPN', '-', '49.6', '55.1', '41.4', '-', '-',
          '-', '-', '-'] in paper_rows
  assert ['paper', 'CMT-DeepLab (iter 200k)', 'Axial-R104 ‡-RFN', '270.3M', '55.3',
          '61.0', '46.6', '55.7', '61.6', '46.8', '83.6', '65.9'] in paper_rows


def test_table4_from_a_json_file_and_the_paper_rows(model_dir):
  path = os.path.join(model_dir, 'eval', 'results-250.json')
  rows = _rows(paper_tables.render_table4([f'cmt:{path}']))
  assert rows == [['ours, step 250', 'cmt', '1.0', '1.0', '1.0', '1.0'],
                  ['paper', 'MaX-DeepLab-S', '61.7', '74.5', '81.5', '79.8'],
                  ['paper', 'CMT-DeepLab-S', '64.6', '77.4', '82.6', '81.4']]


def test_header_matches_row_width():
  for header, rows in ((paper_tables.TABLE1_HEADER, paper_tables.TABLE1_PAPER_ROWS),
                       (paper_tables.TABLE4_HEADER, paper_tables.TABLE4_PAPER_ROWS)):
    assert all(len(header) == len(row) + 1 for row in rows)  # + source.


def test_bad_specs_and_files_name_the_flag(tmp_path, model_dir):
  with pytest.raises(ValueError, match='--run=mine:R50: expected'):
    paper_tables.render_table1(['mine:R50'])
  with pytest.raises(ValueError, match='--cityscapes_run=x: expected NAME:PATH'):
    paper_tables.render_table4(['x'])
  with pytest.raises(ValueError, match='holds no results'):
    paper_tables.render_table1([f'a:b:c:{tmp_path}'])
  with pytest.raises(ValueError, match='does not exist'):
    paper_tables.render_table1([f'a:b:c:{tmp_path}/nothing.json'])
  incomplete = _write_results(str(tmp_path / 'other'), 5, pq=1.0, sq=2.0)
  with pytest.raises(ValueError, match=r"--cityscapes_run: .* lacks \['rq', 'miou'\]"):
    paper_tables.render_table4([f'x:{incomplete}'])


def test_render_selects_tables_in_the_given_order(model_dir):
  markdown = render_tables.render(['4', '1'], [], [f'cmt:{model_dir}'])
  assert markdown.index('Table 4') < markdown.index('Table 1')
  assert 'ours, step 1000 | cmt | 12.3 | 17.6 | 70.0 | 33.3' in markdown
  with pytest.raises(ValueError, match='--tables=2'):
    render_tables.render(['2'], [], [])


def test_write_to_a_file_or_stdout(tmp_path, capsys):
  output = str(tmp_path / 'tables.md')
  render_tables.write('| a |\n', output)
  with open(output) as f:
    assert f.read() == '| a |\n'
  render_tables.write('| b |\n', None)
  assert capsys.readouterr().out == '| b |\n'
