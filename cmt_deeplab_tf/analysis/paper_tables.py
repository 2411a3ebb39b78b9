"""Our eval results as Markdown tables in the layout of the supplement's Tables 1, 4.

- Table 1 (COCO): method, backbone, params, val PQ / PQ^Th / PQ^St, test-dev PQ /
  PQ^Th / PQ^St / SQ / RQ. Our rows fill the val columns from an eval JSON
  (`results-<step>.json` of `panoptic_evaluator`, values in percent); test-dev
  is scored by the COCO server only, so our test-dev cells are '-'.
- Table 4 (Cityscapes val): method, PQ, RQ, SQ, mIoU.

The paper's rows are kept here as data, copied from the supplement's text, and
every table lists them below ours; the `source` column tells them apart
('ours, step S' or 'paper').
"""
import collections
import json
import os
import re
from typing import List, Mapping, Optional, Sequence

import tensorflow as tf

MISSING = '-'
PAPER = 'paper'

# Supplement Table 1. Markers as in the paper: † concurrent work, ‡ ImageNet-22K
# pretraining. Values: val PQ, PQ^Th, PQ^St, test-dev PQ, PQ^Th, PQ^St, SQ, RQ;
# None where the paper has '-'.
Table1Row = collections.namedtuple('Table1Row', [
    'method', 'backbone', 'params', 'pq', 'pq_th', 'pq_st', 'test_pq',
    'test_pq_th', 'test_pq_st', 'test_sq', 'test_rq'])
TABLE1_PAPER_ROWS = (
    Table1Row('MaX-DeepLab-S', 'MaX-S', '61.9M',
              48.4, 53.0, 41.5, 49.0, 54.0, 41.6, None, None),
    Table1Row('MaX-DeepLab-L', 'MaX-L', '451M',
              51.1, 57.0, 42.2, 51.3, 57.2, 42.4, 82.5, 61.3),
    Table1Row('MaskFormer †', 'Swin-B ‡', '102M',
              51.8, 56.9, 44.1, None, None, None, None, None),
    Table1Row('MaskFormer †', 'Swin-L ‡', '212M',
              52.7, 58.5, 44.0, 53.3, 59.1, 44.5, 82.0, 64.1),
    Table1Row('K-Net †', 'R101-FPN', None,
              49.6, 55.1, 41.4, None, None, None, None, None),
    Table1Row('K-Net †', 'R101-FPN-DCN', None,
              48.3, 54.0, 39.7, None, None, None, None, None),
    Table1Row('K-Net †', 'Swin-L ‡', None,
              54.6, 60.2, 46.0, 55.2, 61.2, 46.2, 82.4, 66.1),
    Table1Row('CMT-DeepLab', 'Axial-R50 ‡', '94.9M',
              53.0, 57.7, 45.9, 53.4, 58.3, 46.0, 83.0, 63.6),
    Table1Row('CMT-DeepLab', 'Axial-R104 ‡', '135.2M',
              54.1, 58.8, 47.1, 54.5, 59.6, 46.9, 83.2, 64.7),
    Table1Row('CMT-DeepLab', 'Axial-R104 ‡-RFN', '270.3M',
              55.1, 60.6, 46.8, 55.4, 61.0, 47.0, 83.5, 65.6),
    Table1Row('CMT-DeepLab (iter 200k)', 'Axial-R104 ‡-RFN', '270.3M',
              55.3, 61.0, 46.6, 55.7, 61.6, 46.8, 83.6, 65.9),
)
TABLE1_HEADER = ('source', 'method', 'backbone', 'params', 'PQ (val)',
                 'PQ^Th (val)', 'PQ^St (val)', 'PQ (test-dev)',
                 'PQ^Th (test-dev)', 'PQ^St (test-dev)', 'SQ (test-dev)',
                 'RQ (test-dev)')
TABLE1_LEGEND = ('†: concurrent work; ‡: ImageNet-22K pretraining (supplement '
                 'Table 1). Our rows: val columns from our eval JSON; test-dev '
                 'is scored by the COCO server only.')

# Supplement Table 4: Cityscapes val, PQ, RQ, SQ, mIoU.
Table4Row = collections.namedtuple('Table4Row', ['method', 'pq', 'rq', 'sq', 'miou'])
TABLE4_PAPER_ROWS = (
    Table4Row('MaX-DeepLab-S', 61.7, 74.5, 81.5, 79.8),
    Table4Row('CMT-DeepLab-S', 64.6, 77.4, 82.6, 81.4),
)
TABLE4_HEADER = ('source', 'method', 'PQ', 'RQ', 'SQ', 'mIoU')

# The eval JSON keys each table reads.
TABLE1_KEYS = ('pq', 'pq_th', 'pq_st')
TABLE4_KEYS = ('pq', 'rq', 'sq', 'miou')

_RESULTS_FILE = re.compile(r'^results-(\d+)\.json$')


def latest_results_file(model_dir: str, flag: str) -> str:
  """`<model_dir>/eval/results-<step>.json` with the largest step.

  Raises:
    ValueError: naming `flag` and the directory, if it holds none.
  """
  eval_dir = os.path.join(model_dir, 'eval')
  names = tf.io.gfile.listdir(eval_dir) if tf.io.gfile.isdir(eval_dir) else []
  steps = {int(m.group(1)): name for name in names
           if (m := _RESULTS_FILE.match(name))}
  if not steps:
    raise ValueError(f'{flag}: {eval_dir} holds no results-<step>.json.')
  return os.path.join(eval_dir, steps[max(steps)])


def load_results(path: str, keys: Sequence[str], flag: str) -> Mapping[str, float]:
  """The eval JSON at `path` (a file, or a model dir: its latest results file).

  Raises:
    ValueError: naming `flag` and the file, if it is missing, not JSON, or
      lacks one of `keys`.
  """
  if tf.io.gfile.isdir(path):
    path = latest_results_file(path, flag)
  if not tf.io.gfile.exists(path):
    raise ValueError(f'{flag}: {path} does not exist.')
  try:
    with tf.io.gfile.GFile(path) as f:
      results = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{flag}: {path} is not JSON: {e}') from e
  missing = [key for key in keys if key not in results]
  if missing:
    raise ValueError(f'{flag}: {path} lacks {missing} (not an eval results file?).')
  return results


def _source(results: Mapping[str, float]) -> str:
  step = results.get('step')
  return 'ours' if step is None else f'ours, step {step}'


def _cell(value) -> str:
  """One decimal for numbers, as the paper prints them; '-' for None."""
  if value is None:
    return MISSING
  return f'{value:.1f}' if isinstance(value, (int, float)) else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub Markdown table; None cells become '-', floats get one decimal."""
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(_cell(value) for value in row) + ' |' for row in rows]
  return '\n'.join(lines)


def parse_table1_run(spec: str, flag: str = '--run') -> List[object]:
  """'NAME:BACKBONE:PARAMS:PATH' -> our Table 1 row (PATH: JSON or model dir).

  Raises:
    ValueError: naming the flag, if the spec has fewer than four fields or the
      results cannot be read.
  """
  fields = spec.split(':', 3)
  if len(fields) != 4 or not all(fields):
    raise ValueError(f'{flag}={spec}: expected NAME:BACKBONE:PARAMS:PATH.')
  name, backbone, params, path = fields
  results = load_results(path, TABLE1_KEYS, flag)
  return ([_source(results), name, backbone, params] +
          [results[key] for key in TABLE1_KEYS] + [None] * 5)


def parse_table4_run(spec: str, flag: str = '--cityscapes_run') -> List[object]:
  """'NAME:PATH' -> our Table 4 row (PATH: JSON or model dir).

  Raises:
    ValueError: naming the flag, if the spec is not NAME:PATH or the results
      cannot be read.
  """
  fields = spec.split(':', 1)
  if len(fields) != 2 or not all(fields):
    raise ValueError(f'{flag}={spec}: expected NAME:PATH.')
  name, path = fields
  results = load_results(path, TABLE4_KEYS, flag)
  return [_source(results), name] + [results[key] for key in TABLE4_KEYS]


def render_table1(run_specs: Optional[Sequence[str]] = None) -> str:
  """Supplement Table 1 (COCO) with our rows first, then the paper's."""
  rows = [parse_table1_run(spec) for spec in run_specs or []]
  rows += [[PAPER, *row] for row in TABLE1_PAPER_ROWS]
  return '\n'.join(['Table 1: COCO val and test-dev (layout of the CMT-DeepLab '
                    'supplement, Table 1).', '', markdown_table(TABLE1_HEADER, rows),
                    '', TABLE1_LEGEND])


def render_table4(run_specs: Optional[Sequence[str]] = None) -> str:
  """Supplement Table 4 (Cityscapes val) with our rows first, then the paper's."""
  rows = [parse_table4_run(spec) for spec in run_specs or []]
  rows += [[PAPER, *row] for row in TABLE4_PAPER_ROWS]
  return '\n'.join(['Table 4: Cityscapes val (layout of the CMT-DeepLab supplement, '
                    'Table 4).', '', markdown_table(TABLE4_HEADER, rows)])
