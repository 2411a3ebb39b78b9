"""The visualize CLI end to end on an untrained `tiny` run, and its flag checks."""
import os
import subprocess
import sys

import gin
import numpy as np
from PIL import Image
import pytest

from cmt_deeplab_tf import visualize
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from tests import run_dirs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFO = dataset_info_lib.get_dataset_info('synthetic')
NUM_CLUSTERS = 8
# An untrained model is never confident: zero thresholds keep its segments.
OPERATIVE_CONFIG = f"""
build_model.name = 'tiny'
build_model.num_clusters = {NUM_CLUSTERS}
ExperimentConfig.dataset_name = 'synthetic'
PostProcessor.thing_class_threshold = 0.0
PostProcessor.stuff_class_threshold = 0.0
PostProcessor.pixel_confidence_threshold = 0.0
PostProcessor.thing_area_limit = 0
PostProcessor.stuff_area_limit = 0
"""
PAD, LINE, TILE = 4, 14, 48  # figures.PAD / LINE_HEIGHT, and --tile_size.
TINY_CMT_LAYERS = 3


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def untrained_run(tmp_path_factory):
  """A model dir with an operative config and a checkpoint of a fresh `tiny`."""
  model_dir = str(tmp_path_factory.mktemp('run'))
  run_dirs.write_untrained_run(model_dir, OPERATIVE_CONFIG, INFO.num_classes, NUM_CLUSTERS)
  return model_dir


@pytest.fixture
def image_dir(tmp_path):
  """Two images: 64x64 (padded to 65x65) and 40x70 (padded to 65x97)."""
  directory = tmp_path / 'images'
  directory.mkdir()
  rng = np.random.default_rng(0)
  for name, size in (('square', (64, 64)), ('wide', (40, 70))):
    pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    pixels[size[0] // 4:size[0] // 2, size[1] // 4:size[1] // 2] = (250, 40, 40)
    Image.fromarray(pixels).save(directory / f'{name}.png')
  (directory / 'notes.txt').write_text('not an image')
  return str(directory)


def test_cli_writes_both_figures_per_image(untrained_run, image_dir, tmp_path):
  output_dir = str(tmp_path / 'figures')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [sys.executable, '-m', 'cmt_deeplab_tf.visualize',
       f'--model_dir={untrained_run}', f'--max_model_dir={untrained_run}',
       f'--image_dir={image_dir}', f'--output_dir={output_dir}',
       '--num_centers=2', f'--tile_size={TILE}'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(output_dir)) == [
      'square_attention.png', 'square_clustering.png', 'wide_attention.png',
      'wide_clustering.png']
  # Columns: the segment + one per CMT layer; the segment + CMT + compared model.
  tile_heights = {'square': TILE, 'wide': round(TILE * 40 / 70)}
  for name, columns in (('clustering', 1 + TINY_CMT_LAYERS), ('attention', 3)):
    for image, tile_height in tile_heights.items():
      with Image.open(os.path.join(output_dir, f'{image}_{name}.png')) as figure:
        width, height = figure.size
      assert width == PAD + columns * (TILE + PAD)
      # Title lines and column titles (LINE each), then 1 or 2 rows of tiles.
      title_heights = [height - PAD - LINE - rows * (tile_height + PAD)
                       for rows in (1, 2)]
      assert any(h > 0 and h % LINE == 0 for h in title_heights), (name, image)


def test_image_paths_come_from_exactly_one_flag(image_dir):
  assert [os.path.basename(p) for p in visualize.resolve_image_paths(
      image_dir, None)] == ['square.png', 'wide.png']
  square = os.path.join(image_dir, 'square.png')
  assert visualize.resolve_image_paths(None, [square]) == [square]
  with pytest.raises(ValueError, match='exactly one of --image_dir and --images'):
    visualize.resolve_image_paths(image_dir, [square])
  with pytest.raises(ValueError, match='exactly one of --image_dir and --images'):
    visualize.resolve_image_paths(None, None)
  with pytest.raises(ValueError, match='--images: no such file'):
    visualize.resolve_image_paths(None, [square, '/nonexistent/a.jpg'])


def test_bad_arguments_name_the_flag(tmp_path):
  with pytest.raises(ValueError, match='--model_dir=.* does not exist'):
    visualize.visualize(str(tmp_path / 'missing'), [], str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='--num_centers'):
    visualize.visualize(str(tmp_path), [], str(tmp_path / 'out'), num_centers=0)
  with pytest.raises(ValueError, match='--alpha'):
    visualize.visualize(str(tmp_path), [], str(tmp_path / 'out'), alpha=2.0)
