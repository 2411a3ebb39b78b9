"""Where the DeepLab2 fixtures are, and how the tests build the models they fit."""
import os

import numpy as np
import pytest

# <repository root>/../shared/fixtures/deeplab2 (DeepLab2-made; see its README).
FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    os.pardir, 'shared', 'fixtures', 'deeplab2')
MAX_DEEPLAB_S_COCO = 'max_deeplab_s_coco'
MAX_DEEPLAB_S_BACKBONE = 'max_deeplab_s_backbone_imagenet'
AXIAL_RESNET50_GELU = 'axial_resnet50_gelu_imagenet'
RESNET50 = 'resnet50_imagenet'
FIXTURE_WIDTH = 0.125  # Every width of the fixtures is 1/8 of the published one.


def require_fixtures():
  """Skips the calling test when the fixture folder is absent."""
  if not os.path.isdir(FIXTURES):
    pytest.skip(f'DeepLab2 fixtures not found at {os.path.normpath(FIXTURES)}')


def checkpoint_path(folder):
  require_fixtures()
  return os.path.join(FIXTURES, folder, 'ckpt-1')


def reference(folder):
  """DeepLab2's outputs (`reference.npz`) and our input for its image."""
  require_fixtures()
  outputs = dict(np.load(os.path.join(FIXTURES, folder, 'reference.npz')))
  # DeepLab2's input normalisation, as ours: image / 127.5 - 1.
  image = outputs['image'].astype(np.float32) / 127.5 - 1.0
  return image, outputs


def assert_close_to_reference(ours, theirs, name):
  """Equal up to float32 round-off: 1e-4 of the output's scale (max |x|)."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, name
  scale = float(np.max(np.abs(theirs)))
  assert scale > 0, name
  error = float(np.max(np.abs(ours - theirs)))
  assert error <= 1e-4 * scale, (
      f'{name}: max |ours - DeepLab2| = {error:.3g}, scale {scale:.3g}')
