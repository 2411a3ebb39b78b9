"""Where the DeepLab2 fixtures are, and how the tests build the models they fit.

Two fixture sets, in one layout (`scripts/make_deeplab2_fixtures.py`): per
checkpoint layout a folder with DeepLab2's checkpoint `ckpt-1`, random weights
and batch-norm statistics included, and `reference.npz` (its input image and
DeepLab2's outputs), plus `full_size_variables.json` (every key and shape of
the published checkpoints).

- `COMMITTED`: `tests/fixtures/deeplab2`, made by that script and committed;
  every width 1/32 of the published one, dual-path layers at 1/4. The tests
  run on it on any clone.
- `SHARED`: `../shared/fixtures/deeplab2` beside the repository, 1/8 width,
  larger inputs; an extra check where it is present, skipped where it is not.

`fixture_set` (tests/checkpoints/conftest.py) parametrises a test over both.
"""
import dataclasses
import os

import numpy as np
import pytest

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MAX_DEEPLAB_S_COCO = 'max_deeplab_s_coco'
MAX_DEEPLAB_S_BACKBONE = 'max_deeplab_s_backbone_imagenet'
AXIAL_RESNET50_GELU = 'axial_resnet50_gelu_imagenet'
RESNET50 = 'resnet50_imagenet'
KMAX_RESNET50_COCO = 'kmax_resnet50_coco'
KMAX_AXIAL_RESNET50_COCO = 'kmax_axial_resnet50_coco'
FULL_SIZE_VARIABLES = 'full_size_variables.json'
FULL_SIZE_KMAX_VARIABLES = 'full_size_kmax_variables.json'  # Committed set only.


@dataclasses.dataclass(frozen=True)
class FixtureSet:
  """A folder of DeepLab2 fixtures and the widths DeepLab2 built them at.

  Attributes:
    name: Test id.
    path: The folder.
    width: Every width is the published one times this
      (`build_model.width_multiplier`).
    transformer_expansion: The dual-path layers' 128 filters times this
      (`build_model.transformer_expansion`).
    optional: Absent -> the test is skipped (else it fails).
  """
  name: str
  path: str
  width: float
  transformer_expansion: float
  optional: bool

  def require(self):
    """Skips (optional set) or fails the calling test when the folder is absent."""
    if os.path.isdir(self.path):
      return
    message = f'DeepLab2 fixtures not found at {os.path.normpath(self.path)}'
    if self.optional:
      pytest.skip(message)
    pytest.fail(message + ' (make them with scripts/make_deeplab2_fixtures.py)')

  def file(self, name):
    self.require()
    return os.path.join(self.path, name)

  def checkpoint_path(self, folder):
    return os.path.join(self.file(folder), 'ckpt-1')

  def reference(self, folder):
    """DeepLab2's outputs (`reference.npz`) and our input for its image."""
    outputs = dict(np.load(os.path.join(self.file(folder), 'reference.npz')))
    # DeepLab2's input normalisation, as ours: image / 127.5 - 1.
    image = outputs['image'].astype(np.float32) / 127.5 - 1.0
    return image, outputs

  def model_widths(self):
    """`build_model` keyword arguments of MaX-DeepLab-S at this set's widths."""
    return dict(width_multiplier=self.width,
                transformer_expansion=self.transformer_expansion)


COMMITTED = FixtureSet(
    'committed', os.path.join(_REPOSITORY, 'tests', 'fixtures', 'deeplab2'),
    width=1 / 32, transformer_expansion=1 / 4, optional=False)
SHARED = FixtureSet(
    'shared', os.path.join(_REPOSITORY, os.pardir, 'shared', 'fixtures',
                           'deeplab2'),
    width=1 / 8, transformer_expansion=1.0, optional=True)
SETS = (COMMITTED, SHARED)


def assert_close_to_reference(ours, theirs, name):
  """Equal up to float32 round-off: 1e-4 of the output's scale (max |x|)."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, name
  scale = float(np.max(np.abs(theirs)))
  assert scale > 0, name
  error = float(np.max(np.abs(ours - theirs)))
  assert error <= 1e-4 * scale, (
      f'{name}: max |ours - DeepLab2| = {error:.3g}, scale {scale:.3g}')
