"""Variable names, shapes and checkpoint keys of every named model.

The listing in `tests/fixtures/model_variables.json.gz` was written by this
module from the code before the forward pass was restructured into one loop, so
`test_variable_listing.py` proves that a refactoring moved no variable: for
every model of `builder.MODELS` at the COCO sizes (133 classes, 128 clusters),
each variable's name and shape, and its key in a `tf.train.Checkpoint(model=...)`
(the object-graph path, which changes when an attribute or a dict of layers is
replaced even if the variable names stay). A model added later is appended to the
listing without rewriting the others' entries.

Regenerate (only when a change of names is intended) with
  python -m tests.modeling.variable_listing [name ...]
which rewrites the entries of the named models (default: every model) and keeps
the others'.
"""
import gzip
import json
import pathlib
import sys

import tensorflow as tf
import tf_keras
from tensorflow.python.checkpoint import graph_view  # pylint: disable=g-direct-tensorflow-import

from cmt_deeplab_tf.modeling import builder

FIXTURE = (pathlib.Path(__file__).parent.parent / 'fixtures' /
           'model_variables.json.gz')
NUM_CLASSES = 133
NUM_CLUSTERS = 128
_INPUT_SIZE = 33  # 32k + 1: every stride aligns; small, so the build is cheap.


def checkpoint_keys(model):
  """{variable id: its object-graph path in tf.train.Checkpoint(model=model)}."""
  checkpoint = tf.train.Checkpoint(model=model)  # The view holds it weakly.
  objects, paths = graph_view.ObjectGraphView(
      checkpoint).breadth_first_traversal()
  return {id(obj): '/'.join(ref.name for ref in paths[obj])
          for obj in objects if isinstance(obj, tf.Variable)}


def list_model(name):
  """[[variable name, shape, checkpoint key], ...] of a named model.

  The model runs once at inference and once in training, which creates every
  variable (training-only heads included), as `create_all_variables` does.
  """
  model = builder.build_model(name, num_classes=NUM_CLASSES,
                              num_clusters=NUM_CLUSTERS)
  images = tf.zeros([1, _INPUT_SIZE, _INPUT_SIZE, 3])
  model(images, training=False)
  model(images, training=True)
  keys = checkpoint_keys(model)
  return [[v.name, v.shape.as_list(), keys[id(v)]] for v in model.variables]


def load():
  """The committed listing: {model name: list_model(name)}."""
  with gzip.open(FIXTURE, 'rt') as f:
    return json.load(f)


def main(names):
  """Rewrites the entries of `names` (all models if empty), keeps the rest."""
  unknown = sorted(set(names) - set(builder.MODELS))
  if unknown:
    raise SystemExit(f'Unknown model names {unknown}; expected some of '
                     f'{sorted(builder.MODELS)}.')
  listing = load() if names and FIXTURE.exists() else {}
  for name in sorted(names or builder.MODELS):
    listing[name] = list_model(name)
    tf_keras.backend.clear_session()
  FIXTURE.parent.mkdir(parents=True, exist_ok=True)
  with gzip.GzipFile(FIXTURE, 'wb', mtime=0) as f:
    f.write(json.dumps(listing, separators=(',', ':'), sort_keys=True).encode())
  print(f'{FIXTURE}: {sum(map(len, listing.values()))} variables of '
        f'{len(listing)} models, {FIXTURE.stat().st_size} bytes')


if __name__ == '__main__':
  main(sys.argv[1:])
