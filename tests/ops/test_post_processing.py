"""Post-processing on hand-made logits whose panoptic result is known."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.ops import post_processing

IS_THING = (True, True, False)  # Classes 0, 1 are things, 2 is stuff.
DIVISOR = 1000
VOID = common.IGNORE_LABEL * DIVISOR


def _class_logits(*classes):
  """One row per cluster: a confident class, or 3 (= no-object)."""
  logits = np.zeros((1, len(classes), 4), np.float32)
  for n, c in enumerate(classes):
    logits[0, n, c] = 10.0
  return logits


def _quadrant_masks():
  """4x4 image, 4 clusters: top-left, top-right, bottom-left, bottom-right."""
  logits = np.zeros((1, 4, 4, 4), np.float32)
  logits[0, :2, :2, 0] = logits[0, :2, 2:, 1] = 10.0
  logits[0, 2:, :2, 2] = logits[0, 2:, 2:, 3] = 10.0
  return logits


def _run(class_logits, mask_logits, size=None, **kwargs):
  kwargs.setdefault('thing_area_limit', 0)
  kwargs.setdefault('stuff_area_limit', 0)
  processor = post_processing.PostProcessor(IS_THING, DIVISOR, output_stride=1,
                                            **kwargs)
  size = size or mask_logits.shape[1:3]
  result = processor({common.CLASS_LOGITS: tf.constant(class_logits),
                      common.MASK_LOGITS: tf.constant(mask_logits)}, size)
  return {k: v.numpy() for k, v in result.items()}


def test_pixelwise_things_stuff_and_no_object():
  # Two class-0 things on top, a stuff cluster bottom-left, no-object bottom-right.
  result = _run(_class_logits(0, 0, 2, 3), _quadrant_masks())
  expected = np.array([[1, 1, 2, 2], [1, 1, 2, 2],
                       [2000, 2000, VOID, VOID], [2000, 2000, VOID, VOID]])
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0], expected)
  np.testing.assert_array_equal(result[common.INSTANCE_PRED][0],
                                np.where(expected == VOID, 0, expected % DIVISOR))
  np.testing.assert_array_equal(result[common.SEGMENT_PANOPTIC_IDS],
                                [[1, 2, 2000, -1]])
  scores = result[common.SEGMENT_SCORES][0]
  assert np.all(scores[:3] > 0.99) and scores[3] == 0.0


def test_stuff_clusters_of_one_class_merge_before_the_area_limit():
  # Both bottom clusters are class-2 stuff: 4 pixels each, 8 merged.
  result = _run(_class_logits(0, 1, 2, 2), _quadrant_masks(), stuff_area_limit=6)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, 2:], 2000)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, :2],
                                [[1, 1, 1002, 1002], [1, 1, 1002, 1002]])
  result = _run(_class_logits(0, 1, 2, 2), _quadrant_masks(), stuff_area_limit=9)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, 2:], VOID)


def test_thing_area_limit_and_consecutive_instance_ids():
  masks = _quadrant_masks()
  masks[0, 1, 1, 0] = 0.0  # The top-left thing loses a pixel to no cluster...
  masks[0, 1, 1, 2] = 20.0  # ...but to the stuff cluster: area 3.
  result = _run(_class_logits(0, 0, 2, 3), masks, thing_area_limit=4)
  panoptic = result[common.PANOPTIC_PRED][0]
  np.testing.assert_array_equal(panoptic[:2, :2], [[VOID, VOID], [VOID, 2000]])
  # The surviving thing is instance 1, not 2: ids are consecutive.
  np.testing.assert_array_equal(panoptic[:2, 2:], 1)
  np.testing.assert_array_equal(result[common.SEGMENT_PANOPTIC_IDS],
                                [[-1, 1, 2000, -1]])


def test_class_confidence_threshold():
  class_logits = _class_logits(0, 1, 2, 3)
  class_logits[0, 1, 1] = 1.0  # Cluster 1: confidence e / (e + 3) = 0.475.
  result = _run(class_logits, _quadrant_masks())
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, :2, 2:], VOID)
  result = _run(class_logits, _quadrant_masks(), thing_class_threshold=0.4)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, :2, 2:], 1002)


def test_pixel_confidence_threshold():
  masks = _quadrant_masks()
  masks[0, 3, 0, :3] = 10.0  # Three confident clusters tie: probability 1/3.
  result = _run(_class_logits(0, 1, 2, 3), masks)
  panoptic = result[common.PANOPTIC_PRED][0]
  assert panoptic[3, 0] == VOID and panoptic[2, 0] == 2000
  result = _run(_class_logits(0, 1, 2, 3), masks, pixel_confidence_threshold=0.3)
  assert result[common.PANOPTIC_PRED][0, 3, 0] == 1  # Ties go to the first cluster.


def test_semantic_without_thresholds_ignores_void():
  class_logits = _class_logits(0, 1, 2, 3)
  class_logits[0, 1, 1] = 1.0
  result = _run(class_logits, _quadrant_masks())
  semantic = result[common.SEMANTIC_PRED][0]
  # Cluster 1 is below the class threshold but its best class is still 1; the
  # no-object cluster's best real class is 0 (all real logits equal).
  np.testing.assert_array_equal(semantic, [[0, 0, 1, 1], [0, 0, 1, 1],
                                           [2, 2, 0, 0], [2, 2, 0, 0]])
  result = _run(class_logits, _quadrant_masks(), semantic_without_thresholds=False)
  np.testing.assert_array_equal(result[common.SEMANTIC_PRED][0],
                                np.where(result[common.PANOPTIC_PRED][0] == VOID, 255,
                                         result[common.PANOPTIC_PRED][0] // DIVISOR))


def _overlapping_row():
  """1x6 image: cluster 0 on columns 0-3, cluster 1 on 2-5 (0.5 / 0.5 on 2, 3)."""
  masks = np.zeros((1, 1, 6, 3), np.float32)
  masks[0, 0, :4, 0] = 10.0
  masks[0, 0, 2:, 1] = 10.0
  class_logits = _class_logits(0, 0, 3)
  class_logits[0, 0, 0] = 5.0  # Cluster 1 is more confident: pasted first.
  return class_logits, masks


def test_maskwise_pastes_by_confidence_and_drops_overlapping_masks():
  class_logits, masks = _overlapping_row()
  result = _run(class_logits, masks, method='maskwise', overlap_threshold=0.4)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, 0], [1, 1, 2, 2, 2, 2])
  # Only half of cluster 0 is free: at threshold 0.5 it is dropped.
  result = _run(class_logits, masks, method='maskwise', overlap_threshold=0.5)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, 0],
                                [VOID, VOID, 1, 1, 1, 1])
  # Pixel-wise argmax gives the ties to the first cluster instead.
  result = _run(class_logits, masks)
  np.testing.assert_array_equal(result[common.PANOPTIC_PRED][0, 0], [1, 1, 1, 1, 2, 2])


def test_upsampling_matches_align_corners_resize():
  logits = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  ours = post_processing.upsample_mask_logits(tf.constant(logits), (17, 25))
  reference = tf.compat.v1.image.resize_bilinear(logits, (17, 25), align_corners=True)
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)
  # Other sizes keep the stride-4 alignment and repeat the edge.
  ours = post_processing.upsample_mask_logits(tf.constant(logits), (20, 28))
  np.testing.assert_allclose(ours.numpy()[:, ::4, ::4], logits, atol=1e-6)
  corner = ours.numpy()[:, 16:, 24:]
  np.testing.assert_allclose(corner, np.broadcast_to(logits[:, -1:, -1:], corner.shape),
                             atol=1e-6)


@pytest.mark.parametrize('method', ['pixelwise', 'maskwise'])
def test_xla_agrees_with_eager(method):
  rng = np.random.default_rng(1)
  outputs = {
      common.CLASS_LOGITS: tf.constant(rng.normal(size=(2, 8, 4)) * 4, tf.float32),
      common.MASK_LOGITS: tf.constant(rng.normal(size=(2, 9, 9, 8)) * 4, tf.float32)}
  processor = post_processing.PostProcessor(IS_THING, DIVISOR, method=method,
                                            thing_class_threshold=0.5,
                                            stuff_class_threshold=0.5,
                                            thing_area_limit=20, stuff_area_limit=40)
  eager = processor(outputs, (33, 33))
  compiled = tf.function(lambda o: processor(o, (33, 33)), jit_compile=True)(outputs)
  for key, value in eager.items():
    np.testing.assert_allclose(compiled[key].numpy(), value.numpy(), rtol=1e-6,
                               err_msg=key)
  assert (eager[common.PANOPTIC_PRED].numpy() != VOID).any()


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='method'):
    post_processing.PostProcessor(IS_THING, DIVISOR, method='boxwise')
  with pytest.raises(ValueError, match='pixel_confidence_threshold'):
    post_processing.PostProcessor(IS_THING, DIVISOR, pixel_confidence_threshold=2.0)
  with pytest.raises(ValueError, match='CLASS_LOGITS'):
    _run(np.zeros((1, 4, 6), np.float32), _quadrant_masks())


@pytest.mark.parametrize('method', ['pixelwise', 'maskwise'])
def test_valid_size_gives_what_the_unpadded_image_gives(method):
  # Evaluation post-processes padded crops; with VALID_SIZE the result inside each
  # image must be the one of the image alone (areas, scores and overlaps count only
  # its pixels), and the padding void.
  rng = np.random.default_rng(7)
  class_logits = (rng.normal(size=(2, 6, 4)) * 4).astype(np.float32)
  mask_logits = (rng.normal(size=(2, 12, 14, 6)) * 2).astype(np.float32)
  # Cluster 0 of image 0 is a confident thing with 4 pixels inside and 20 in the
  # padding: it passes the area limit of 6 only if the padding is counted.
  class_logits[0, 0] = [10.0, 0.0, 0.0, 0.0]
  mask_logits[0, :, :, 0] = -10.0
  mask_logits[0, 7:9, 8:14, 0] = mask_logits[0, 9:12, 8:14, 0] = 20.0
  valid_size = np.array([[9, 10], [12, 7]], np.int32)
  processor = post_processing.PostProcessor(
      IS_THING, DIVISOR, method=method, thing_class_threshold=0.5,
      stuff_class_threshold=0.5, thing_area_limit=6, stuff_area_limit=10,
      output_stride=1)

  def run(classes, masks, valid=None):
    outputs = {common.CLASS_LOGITS: tf.constant(classes),
               common.MASK_LOGITS: tf.constant(masks)}
    result = processor(outputs, masks.shape[1:3], valid)
    return {k: v.numpy() for k, v in result.items()}

  padded = run(class_logits, mask_logits, valid_size)
  void = {common.PANOPTIC_PRED: VOID, common.SEMANTIC_PRED: common.IGNORE_LABEL,
          common.INSTANCE_PRED: 0}
  for b, (h, w) in enumerate(valid_size):
    alone = run(class_logits[b:b + 1], mask_logits[b:b + 1, :h, :w])
    outside = np.ones(mask_logits.shape[1:3], bool)
    outside[:h, :w] = False
    for key, void_value in void.items():
      np.testing.assert_array_equal(padded[key][b, :h, :w], alone[key][0], err_msg=key)
      assert (padded[key][b][outside] == void_value).all(), key
    for key in (common.SEGMENT_PANOPTIC_IDS, common.SEGMENT_SCORES):
      np.testing.assert_array_equal(padded[key][b], alone[key][0], err_msg=key)
  # Without VALID_SIZE the straddling thing survives: the test can tell.
  unmasked = run(class_logits, mask_logits)
  assert unmasked[common.SEGMENT_PANOPTIC_IDS][0, 0] >= 0
  assert padded[common.SEGMENT_PANOPTIC_IDS][0, 0] == -1
