"""predict over awkward folders: every PIL format, bad files, batches, resume, progress.

The model is a training run's checkpoint (`--model_dir`), so no export is needed.
"""
import io
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from cmt_deeplab_tf import predict
from cmt_deeplab_tf.data import panoptic_format
from tests import run_dirs
from tests.serving import test_export

REPO_ROOT = test_export.REPO_ROOT
RNG = np.random.default_rng(5)
RGB = RNG.integers(0, 256, (20, 28, 3), np.uint8)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('run'))
  run_dirs.write_untrained_run(path, test_export.OPERATIVE_CONFIG,
                               test_export.INFO.num_classes, test_export.NUM_CLUSTERS)
  return path


def _jpeg_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def _write_formats(folder):
  """Writes one file per format; returns {file name: the RGB pixels expected}."""
  palette_image = Image.fromarray(RGB).quantize(colors=16)
  grey = RGB[..., 0]
  grey16 = (grey.astype(np.uint16) << 8) | 0x7F  # Low byte must be dropped.
  rgba = np.concatenate([RGB, RNG.integers(0, 256, (20, 28, 1), np.uint8)], axis=-1)
  palette_image.save(folder / 'palette.png')
  palette_image.save(folder / 'animation.gif')
  Image.fromarray(RGB).save(folder / 'plain.bmp')
  Image.fromarray(RGB).save(folder / 'lossless.webp', lossless=True)
  Image.fromarray(RGB).save(folder / 'plain.tif')
  Image.fromarray(grey16).save(folder / 'grey16.png')
  Image.fromarray(grey16).save(folder / 'grey16.tif')
  Image.fromarray(rgba).save(folder / 'alpha.png')
  (folder / 'grey.jpg').write_bytes(_jpeg_bytes(grey))
  (folder / 'colour.JPEG').write_bytes(_jpeg_bytes(RGB))
  palette_rgb = np.asarray(palette_image.convert('RGB'))
  grey_rgb = np.repeat(grey[..., np.newaxis], 3, -1)
  with Image.open(folder / 'grey.jpg') as image:  # libjpeg's accurate IDCT, as TF's.
    grey_jpeg = np.repeat(np.asarray(image)[..., np.newaxis], 3, -1)
  with Image.open(folder / 'colour.JPEG') as image:
    colour_jpeg = np.asarray(image)
  return {'palette.png': palette_rgb, 'animation.gif': palette_rgb, 'plain.bmp': RGB,
          'lossless.webp': RGB, 'plain.tif': RGB, 'grey16.png': grey_rgb,
          'grey16.tif': grey_rgb, 'alpha.png': RGB, 'grey.jpg': grey_jpeg,
          'colour.JPEG': colour_jpeg}


def test_every_format_pil_reads_is_read_as_8_bit_rgb(tmp_path):
  expected = _write_formats(tmp_path)
  (tmp_path / 'notes.txt').write_text('not an image')
  assert [os.path.basename(p) for p in predict.list_images(str(tmp_path))] == sorted(
      expected)
  for name, pixels in expected.items():
    image = predict.read_image(str(tmp_path / name))
    assert image.dtype == np.uint8 and image.shape == (20, 28, 3), name
    np.testing.assert_array_equal(image, pixels, err_msg=name)


def _bad_folder(folder):
  """Three good images (two sizes) and three bad files between them."""
  folder.mkdir()
  Image.fromarray(RGB).save(folder / 'a.png')
  (folder / 'b_empty.jpg').write_bytes(b'')
  jpeg = _jpeg_bytes(RGB)
  (folder / 'c_truncated.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  (folder / 'd_text.png').write_text('not an image')
  Image.fromarray(RGB[:17]).save(folder / 'e.bmp')
  Image.fromarray(RGB).save(folder / 'f.gif')
  return ['b_empty.jpg', 'c_truncated.jpg', 'd_text.png']


def test_bad_files_are_named_skipped_and_summarised(model_dir, tmp_path):
  bad = _bad_folder(tmp_path / 'images')
  summary = predict.predict_images(str(tmp_path / 'images'), str(tmp_path / 'out'),
                                   model_dir=model_dir)
  assert summary.num_images == 3
  assert sorted(os.path.basename(p) for p, _ in summary.skipped) == bad
  reasons = dict(summary.skipped)
  assert 'empty file' in reasons[str(tmp_path / 'images' / 'b_empty.jpg')]
  assert 'truncated' in reasons[str(tmp_path / 'images' / 'c_truncated.jpg')]
  assert 'not a readable image' in reasons[str(tmp_path / 'images' / 'd_text.png')]
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(
      f'{stem}{suffix}' for stem in ('a', 'e', 'f') for suffix in predict.VISUAL_SUFFIXES)
  report = summary.report(str(tmp_path / 'out'))
  assert 'Predicted 3 images' in report and '3 skipped' in report
  assert all(name in report for name in bad)

  with pytest.raises(predict.BadImageError, match='b_empty.jpg: empty file'):
    predict.predict_images(str(tmp_path / 'images'), str(tmp_path / 'stop'),
                           model_dir=model_dir, skip_bad_images=False)
  # The file headers are read first: it stopped before predicting anything.
  assert not os.listdir(tmp_path / 'stop')
  only_truncated = tmp_path / 'only_truncated'
  only_truncated.mkdir()
  os.rename(tmp_path / 'images' / 'c_truncated.jpg', only_truncated / 'c_truncated.jpg')
  with pytest.raises(predict.BadImageError, match='c_truncated.jpg: truncated or corrupt'):
    predict.predict_images(str(only_truncated), str(tmp_path / 'stop'),
                           model_dir=model_dir, skip_bad_images=False)


def test_cli_exits_non_zero_with_a_summary_after_writing_the_rest(model_dir, tmp_path):
  _bad_folder(tmp_path / 'images')
  result = subprocess.run(
      [sys.executable, '-m', 'cmt_deeplab_tf.predict', f'--model_dir={model_dir}',
       f'--image_dir={tmp_path / "images"}', f'--output_dir={tmp_path / "out"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Predicted 3 images' in result.stdout and '3 skipped' in result.stdout
  assert 'Skipping' in result.stderr and 'c_truncated.jpg' in result.stderr
  assert len(os.listdir(tmp_path / 'out')) == 3 * len(predict.VISUAL_SUFFIXES)


class _Recording:
  """Wraps a runtime and records the shape of every batch it is called with."""

  def __init__(self, runtime):
    self._runtime, self.info, self.shapes = runtime, runtime.info, []

  def __call__(self, images):
    self.shapes.append(images.shape[:3])
    return self._runtime(images)


@pytest.fixture
def recording(model_dir, monkeypatch):
  runtime = _Recording(predict.load_runtime(model_dir=model_dir))
  monkeypatch.setattr(predict, 'load_runtime', lambda *args: runtime)
  return runtime


def _ids(folder, stem):
  with Image.open(folder / f'{stem}_panoptic_ids.png') as image:
    return panoptic_format.rgb_to_id(np.asarray(image))


def test_batches_hold_images_of_one_size_and_predict_as_singles(recording, tmp_path):
  images = tmp_path / 'images'
  images.mkdir()
  for stem, height in [('a', 20), ('b', 20), ('c', 17), ('d', 20), ('e', 17)]:
    Image.fromarray(RNG.integers(0, 256, (height, 28, 3), np.uint8)).save(
        images / f'{stem}.png')
  predict.predict_images(str(images), str(tmp_path / 'batched'), batch_size=2)
  assert recording.shapes == [(2, 20, 28), (1, 20, 28), (2, 17, 28)]
  recording.shapes.clear()
  predict.predict_images(str(images), str(tmp_path / 'single'))
  assert recording.shapes == [(1, 20, 28)] * 3 + [(1, 17, 28)] * 2
  for stem in 'abcde':
    np.testing.assert_array_equal(_ids(tmp_path / 'batched', stem),
                                  _ids(tmp_path / 'single', stem))


def test_resume_predicts_only_images_without_outputs(recording, tmp_path):
  images = tmp_path / 'images'
  images.mkdir()
  for stem in 'abc':
    Image.fromarray(RGB).save(images / f'{stem}.png')
  out = tmp_path / 'out'
  predict.predict_images(str(images), str(out))
  os.remove(out / 'b_overlay.png')
  recording.shapes.clear()
  summary = predict.predict_images(str(images), str(out), resume=True)
  assert recording.shapes == [(1, 20, 28)]
  assert (summary.resumed, summary.num_images) == (2, 1)
  assert os.path.exists(out / 'b_overlay.png')
  with pytest.raises(ValueError, match='--resume works with --format=visual only'):
    predict.predict_images(str(images), str(out), resume=True, output_format='coco')
  with pytest.raises(ValueError, match='--batch_size=0 must be at least 1'):
    predict.predict_images(str(images), str(out), batch_size=0)


def test_progress_logs_count_and_eta(monkeypatch, caplog):
  monkeypatch.setattr(predict, '_PROGRESS_SECONDS', 0.0)
  progress = predict._Progress(total=4)
  with caplog.at_level(logging.INFO):
    progress.update(1)
    progress.update(3)
  messages = [r.getMessage() for r in caplog.records]
  assert messages[0].startswith('1/4 images') and 'ETA' in messages[0]
  assert messages[1].startswith('4/4 images') and messages[1].endswith('ETA 00:00:00')
