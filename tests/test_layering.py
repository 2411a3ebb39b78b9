"""Imports only point down the project's layers.

`LAYERS` is the one list of the layers, lowest first; the README's Layout
section draws it. A module may import its own layer and the layers below it,
never a layer above. Every module of the package must belong to a layer, so a
new package cannot bypass the rule.
"""
import ast
import pathlib

import pytest

PACKAGE = 'cmt_deeplab_tf'
ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first; the modules of one layer may import each other.
LAYERS = (
    ('common', 'cli', 'config_files'),
    ('data',),
    ('modeling',),
    ('losses', 'ops', 'checkpoints'),
    ('evaluation',),
    ('run_dir',),
    ('training',),
    ('serving', 'analysis'),
    ('train', 'export', 'predict', 'visualize', 'cost_table', 'render_tables',
     'sweep', 'import_deeplab2'),  # Command lines.
)
_LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def _part(module_path: pathlib.Path) -> str:
  """'modeling' for cmt_deeplab_tf/modeling/..., 'train' for cmt_deeplab_tf/train.py."""
  relative = module_path.relative_to(ROOT / PACKAGE)
  return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_parts(tree: ast.AST):
  """(line, layer part) of every import of the package in a parsed module."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if node.module == PACKAGE:  # from cmt_deeplab_tf import common
        names = [f'{PACKAGE}.{alias.name}' for alias in node.names]
      else:
        names = [node.module]
    else:
      continue
    for name in names:
      parts = name.split('.')
      if parts[0] == PACKAGE and len(parts) > 1:
        yield node.lineno, parts[1]


def _modules():
  return sorted(p for p in (ROOT / PACKAGE).rglob('*.py')
                if p.relative_to(ROOT / PACKAGE) != pathlib.Path('__init__.py'))


def test_every_module_belongs_to_a_layer():
  unassigned = sorted({_part(p) for p in _modules()} - set(_LEVEL))
  assert not unassigned, f'Add these to tests/test_layering.py LAYERS: {unassigned}'


def test_no_module_imports_a_higher_layer():
  violations = []
  for path in _modules():
    level = _LEVEL[_part(path)]
    for line, part in _imported_parts(ast.parse(path.read_text(), str(path))):
      if part not in _LEVEL:
        violations.append(f'{path.relative_to(ROOT)}:{line} imports unknown {part}')
      elif _LEVEL[part] > level:
        violations.append(f'{path.relative_to(ROOT)}:{line} ({_part(path)}) imports '
                          f'{part}, a higher layer')
  assert not violations, '\n'.join(violations)


@pytest.mark.parametrize('source, expected', [
    ('from cmt_deeplab_tf.training import train_lib', ['training']),
    ('from cmt_deeplab_tf import common, predict', ['common', 'predict']),
    ('import cmt_deeplab_tf.analysis.colors as c', ['analysis']),
    ('def f():\n  from cmt_deeplab_tf.serving import export_lib', ['serving']),
    ('import numpy\nfrom official.vision import ops', []),
])
def test_imports_are_found_wherever_they_are(source, expected):
  assert [part for _, part in _imported_parts(ast.parse(source))] == expected

