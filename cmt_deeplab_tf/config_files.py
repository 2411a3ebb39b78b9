"""The gin configs that ship with the package, found by name.

The configs live in `gin_configs/` at the top of the source tree (coco/,
cityscapes/, ablations/, synthetic/); `setup.py` installs that folder as the
package data `cmt_deeplab_tf/gin_configs/`. A config is named by its path
under that folder (`coco/cmt_deeplab_s.gin`), on the command line
(`--gin_file coco/cmt_deeplab_s.gin`) and in gin `include` statements, so a
user's own file may `include 'coco/base.gin'` wherever it lives.
"""
import os
from typing import List, Optional, Tuple

import tensorflow as tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The installed copy (a wheel), else the source tree's folder (a checkout or an
# editable install).
_LOCATIONS = (os.path.join(_PACKAGE_DIR, 'gin_configs'),
              os.path.join(os.path.dirname(_PACKAGE_DIR), 'gin_configs'))


def config_root() -> str:
  """The folder of the shipped configs.

  Raises:
    FileNotFoundError: if neither the installed nor the source-tree copy exists.
  """
  for location in _LOCATIONS:
    if os.path.isdir(location):
      return location
  raise FileNotFoundError(f'No gin_configs folder at {" or ".join(_LOCATIONS)}: '
                          'reinstall the package.')


def find(name: str) -> Optional[str]:
  """The path of the shipped config `name` (e.g. 'coco/base.gin'), or None."""
  path = os.path.join(config_root(), name)
  return path if os.path.isfile(path) else None


def resolve(path: str, flag: str = '--gin_file') -> str:
  """A gin file given by `flag`: an existing file as given, else the shipped
  config of that name.

  Raises:
    ValueError: naming the flag, if it is neither.
  """
  if tf.io.gfile.exists(path):
    return path
  shipped = find(path)
  if shipped is None:
    raise ValueError(f'{flag}={path} is neither a file nor a shipped config '
                     '(python -m cmt_deeplab_tf.train --list_configs lists them).')
  return shipped


def config_names() -> List[str]:
  """Every shipped config, by name, sorted."""
  root = config_root()
  return sorted(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, '/')
                for folder, _, files in os.walk(root)
                for f in files if f.endswith('.gin'))


def header(path: str) -> str:
  """A config's description: its first comment paragraph, as one line.

  The paragraph ends at a blank comment line, a `# [paper]` / `# [ours]` tag
  line or the first line that is not a comment.
  """
  lines = []
  with open(path) as f:
    for line in f:
      text = line.strip()
      if not text.startswith('#'):
        break
      text = text.lstrip('#').strip()
      if not text or text.startswith('['):
        break
      lines.append(text)
  return ' '.join(lines)


def list_configs() -> List[Tuple[str, str]]:
  """(name, description) of every shipped config; the description names its
  paper row."""
  return [(name, header(find(name))) for name in config_names()]
