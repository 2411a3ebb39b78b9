"""The auxiliary semantic decoder (ASPP + RES3 / RES2 fusion): shapes,
parameters, which endpoints it reads. Its values against DeepLab2's are tested
in tests/checkpoints/test_kmax_deeplab2.py."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import semantic_decoder

C5, C4, C3, C2 = 16, 12, 8, 4
ASPP, DECODER, LOW = 8, 6, (4, 2)


@pytest.fixture(autouse=True)
def default_gin_config():
  gin.clear_config()
  yield
  gin.clear_config()


def _endpoints(seed=0):
  """Backbone endpoints of a 65x49 image at output stride 32."""
  sizes = {axial_resnet.STAGE5: (3, 2, C5), axial_resnet.RES5: (3, 2, C5),
           axial_resnet.STAGE4: (5, 4, C4), axial_resnet.RES4: (5, 4, C4),
           axial_resnet.STAGE3: (9, 7, C3), axial_resnet.RES3: (9, 7, C3),
           axial_resnet.STAGE2: (17, 13, C2), axial_resnet.RES2: (17, 13, C2)}
  return {name: tf.random.stateless_normal([2, *size], seed=[seed, i])
          for i, (name, size) in enumerate(sorted(sizes.items()))}


def _decoder():
  return semantic_decoder.SemanticDecoder(ASPP, DECODER, LOW,
                                          atrous_rates=(1, 2, 3))


def test_output_is_at_stride_4_with_the_decoder_width():
  decoder = _decoder()
  assert decoder(_endpoints(), training=True).shape == (2, 17, 13, DECODER)


def test_parameters_are_aspp_projections_and_separable_fusions():
  decoder = _decoder()
  decoder(_endpoints())
  bn = 2  # Trainable gamma and beta per channel.
  aspp = (C5 * ASPP + 3 * 9 * C5 * ASPP + C5 * ASPP + 5 * ASPP * ASPP
          + 6 * bn * ASPP)
  projections = C3 * LOW[0] + bn * LOW[0] + C2 * LOW[1] + bn * LOW[1]
  fusion3 = 25 * (ASPP + LOW[0]) + bn * (ASPP + LOW[0]) + (
      (ASPP + LOW[0]) * DECODER + bn * DECODER)
  fusion2 = 25 * (DECODER + LOW[1]) + bn * (DECODER + LOW[1]) + (
      (DECODER + LOW[1]) * DECODER + bn * DECODER)
  count = sum(int(np.prod(v.shape)) for v in decoder.trainable_variables)
  assert count == aspp + projections + fusion3 + fusion2


def test_reads_only_the_unactivated_stage5_res3_and_res2():
  decoder = _decoder()
  endpoints = _endpoints()
  reference = decoder(endpoints, training=False)
  other = _endpoints(seed=1)
  for name in (axial_resnet.RES5, axial_resnet.STAGE4, axial_resnet.RES4,
               axial_resnet.STAGE3, axial_resnet.STAGE2):
    np.testing.assert_array_equal(
        decoder({**endpoints, name: other[name]}, training=False), reference)
  for name in semantic_decoder.LOW_LEVEL + (semantic_decoder.HIGH_LEVEL,):
    changed = decoder({**endpoints, name: other[name]}, training=False)
    assert np.max(np.abs(changed - reference)) > 0, name


def test_one_projection_width_per_low_level_endpoint():
  with pytest.raises(ValueError, match='low_level_channels'):
    semantic_decoder.SemanticDecoder(ASPP, DECODER, (4,))


def test_atrous_rates_and_dropout_are_gin_arguments():
  gin.parse_config(['SemanticDecoder.atrous_rates = (2, 4, 6)',
                    'SemanticDecoder.dropout_rate = 0.0'])
  decoder = semantic_decoder.SemanticDecoder(ASPP, DECODER, LOW)
  assert decoder.aspp.atrous_rates == (2, 4, 6)
  assert decoder.aspp.dropout_rate == 0.0
  with pytest.raises(ValueError, match='aspp_channels'):
    gin.parse_config(['SemanticDecoder.aspp_channels = 4'])
