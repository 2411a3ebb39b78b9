"""The scripts in scripts/ as modules, for tests of their functions."""
import functools
import importlib.util
import pathlib

from absl import flags

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / 'scripts'


@functools.lru_cache(maxsize=None)
def load(name):
  """scripts/<name>.py as a module, loaded once per process.

  The absl flags the script defines are removed again once it is loaded: two
  scripts may define the same flag (e.g. `--deeplab2_path`) and a test process
  may load both. A loaded script's functions that read its flags fail; test
  those by running the script.
  """
  spec = importlib.util.spec_from_file_location(name, SCRIPTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  defined_before = set(flags.FLAGS)
  spec.loader.exec_module(module)
  for flag_name in set(flags.FLAGS) - defined_before:
    delattr(flags.FLAGS, flag_name)
  return module
