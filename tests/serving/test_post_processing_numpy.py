"""The NumPy post-processor gives the TF post-processor's maps on random logits."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.ops import post_processing_numpy

IS_THING = (True, True, False, False, True)
LABEL_DIVISOR = 100
MAPS = (common.PANOPTIC_PRED, common.SEMANTIC_PRED, common.INSTANCE_PRED,
        common.SEGMENT_PANOPTIC_IDS)
# Settings under which random logits leave several segments of both kinds.
SETTINGS = [
    dict(method='pixelwise', thing_class_threshold=0.3, stuff_class_threshold=0.25,
         pixel_confidence_threshold=0.2, thing_area_limit=20, stuff_area_limit=40),
    dict(method='pixelwise', semantic_without_thresholds=False,
         thing_class_threshold=0.0, stuff_class_threshold=0.0,
         pixel_confidence_threshold=0.0, thing_area_limit=0, stuff_area_limit=0),
    dict(method='maskwise', thing_class_threshold=0.3, stuff_class_threshold=0.3,
         pixel_confidence_threshold=0.15, thing_area_limit=10, stuff_area_limit=30,
         overlap_threshold=0.6),
    dict(method='maskwise', thing_class_threshold=0.2, stuff_class_threshold=0.2,
         pixel_confidence_threshold=0.1, thing_area_limit=0, stuff_area_limit=0,
         reorder_class_weight=0.5, reorder_mask_weight=2.0),
]


def _random_outputs(seed, batch=2, num_slots=10, logit_size=(9, 13)):
  rng = np.random.default_rng(seed)
  return {
      common.CLASS_LOGITS: rng.normal(0, 2.0, (batch, num_slots, len(IS_THING) + 1)
                                      ).astype(np.float32),
      common.MASK_LOGITS: rng.normal(0, 3.0, (batch, *logit_size, num_slots)
                                     ).astype(np.float32),
  }


@pytest.mark.parametrize('settings', SETTINGS)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_numpy_maps_equal_the_tf_maps(settings, seed):
  outputs = _random_outputs(seed)
  output_size = (33, 47)  # Not a 4k + 1 size: the edge repetition is exercised.
  expected = post_processing.PostProcessor(IS_THING, LABEL_DIVISOR, **settings)(
      {k: tf.constant(v) for k, v in outputs.items()}, output_size)
  actual = post_processing_numpy.PostProcessor(IS_THING, LABEL_DIVISOR, **settings)(
      outputs, output_size)
  assert sorted(actual) == sorted(expected)
  for key in MAPS:
    assert actual[key].dtype == np.int32
    np.testing.assert_array_equal(actual[key], expected[key].numpy(), err_msg=key)
  np.testing.assert_allclose(actual[common.SEGMENT_SCORES],
                             expected[common.SEGMENT_SCORES].numpy(), rtol=1e-6)
  # Not vacuous: things and stuff survive, some pixels are void.
  panoptic = actual[common.PANOPTIC_PRED]
  semantic = panoptic // LABEL_DIVISOR
  assert (actual[common.INSTANCE_PRED] > 0).any()
  assert np.isin(semantic, [2, 3]).any()
  assert len(np.unique(panoptic)) >= 4


def test_upsampling_is_bitwise_the_tf_one():
  logits = np.random.default_rng(3).normal(size=(1, 6, 7, 4)).astype(np.float32)
  expected = post_processing.upsample_mask_logits(tf.constant(logits), (21, 30))
  actual = post_processing_numpy.upsample_mask_logits(logits, (21, 30))
  assert actual.dtype == np.float32
  np.testing.assert_array_equal(actual, expected.numpy())


def test_bad_settings_and_class_counts_raise():
  with pytest.raises(ValueError, match="method must be 'pixelwise' or 'maskwise'"):
    post_processing_numpy.PostProcessor(IS_THING, LABEL_DIVISOR, method='boxes')
  outputs = _random_outputs(0)
  with pytest.raises(ValueError, match='CLASS_LOGITS must have 4 channels'):
    post_processing_numpy.PostProcessor(IS_THING[:3], LABEL_DIVISOR)(outputs, (9, 9))
