"""Tests of the COCO panoptic PNG / JSON helpers."""
import numpy as np
import pytest

from cmt_deeplab_tf.data import panoptic_format


def test_rgb_id_round_trip_matches_coco_formula():
  ids = np.array([[0, 1, 255], [256, 65536 + 2, 256**3 - 1]])
  rgb = panoptic_format.id_to_rgb(ids)
  # COCO panopticapi: id = R + 256 * G + 256^2 * B.
  assert rgb[1, 1].tolist() == [2, 0, 1]
  assert rgb[1, 0].tolist() == [0, 1, 0]
  np.testing.assert_array_equal(panoptic_format.rgb_to_id(rgb), ids)


def test_id_to_rgb_rejects_out_of_range():
  with pytest.raises(ValueError, match='2\\*\\*24'):
    panoptic_format.id_to_rgb(np.array([[256**3]]))


def test_segment_bbox_is_x_y_width_height():
  mask = np.zeros((10, 12), bool)
  mask[2:5, 3:9] = True
  assert panoptic_format.segment_bbox(mask) == [3, 2, 6, 3]
  assert panoptic_format.segment_bbox(np.zeros((3, 3), bool)) == [0, 0, 0, 0]


def test_check_segments_match_names_the_file_and_ids():
  ids = np.array([[0, 5], [7, 7]])
  panoptic_format.check_segments_match(ids, [{'id': 5}, {'id': 7}], 'a.png')
  with pytest.raises(panoptic_format.PanopticFormatError, match=r'a\.png.*\[9\].*PNG'):
    panoptic_format.check_segments_match(ids, [{'id': 5}, {'id': 7}, {'id': 9}], 'a.png')
  with pytest.raises(panoptic_format.PanopticFormatError, match=r'a\.png.*\[7\].*absent'):
    panoptic_format.check_segments_match(ids, [{'id': 5}], 'a.png')
