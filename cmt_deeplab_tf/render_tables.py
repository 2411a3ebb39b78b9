r"""Renders eval results as Markdown tables in the layout of supplement Tables 1, 4.

  python -m cmt_deeplab_tf.render_tables \
      --run=CMT-DeepLab:Axial-R50:93.4M:runs/cmt_s \
      --run=MaX-DeepLab-S:MaX-S:61.9M:runs/max_s/eval/results-150000.json \
      --cityscapes_run=CMT-DeepLab-S:runs/cityscapes_cmt_s \
      [--tables=1,4] [--output=tables.md]

--run (Table 1, COCO) is NAME:BACKBONE:PARAMS:PATH and --cityscapes_run
(Table 4) is NAME:PATH, both repeatable; PATH is an eval `results-<step>.json`
or a model dir (its latest `eval/results-<step>.json`). The paper's rows are
always listed below ours (source 'paper'). Prints to stdout unless --output.
"""
from typing import Optional, Sequence

from absl import flags
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.analysis import paper_tables

TABLES = ('1', '4')


def _define_flags():
  flags.DEFINE_multi_string('run', [], 'Table 1 row: NAME:BACKBONE:PARAMS:PATH.')
  flags.DEFINE_multi_string('cityscapes_run', [], 'Table 4 row: NAME:PATH.')
  flags.DEFINE_list('tables', list(TABLES), 'Which tables to render: 1 and/or 4.')
  flags.DEFINE_string('output', None, 'Markdown file to write; default: stdout.')


def render(tables: Sequence[str], run_specs: Sequence[str],
           cityscapes_specs: Sequence[str]) -> str:
  """The requested tables, separated by a blank line.

  Raises:
    ValueError: naming --tables, on an unknown table.
  """
  unknown = sorted(set(tables) - set(TABLES))
  if unknown or not tables:
    raise ValueError(f'--tables={",".join(tables)}: choose among {",".join(TABLES)}.')
  renderers = {'1': lambda: paper_tables.render_table1(run_specs),
               '4': lambda: paper_tables.render_table4(cityscapes_specs)}
  return '\n\n'.join(renderers[table]() for table in tables) + '\n'


def write(markdown: str, output: Optional[str]) -> None:
  """Writes the Markdown to the file `output`, or to stdout if it is None."""
  if output:
    with tf.io.gfile.GFile(output, 'w') as f:
      f.write(markdown)
  else:
    print(markdown, end='')


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  write(render(FLAGS.tables, FLAGS.run, FLAGS.cityscapes_run), FLAGS.output)


def run():
  _define_flags()
  cli.run_main(main)


if __name__ == '__main__':
  run()
