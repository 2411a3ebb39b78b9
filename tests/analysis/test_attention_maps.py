"""The supplement §3 visualisation recipe, checked on hand-made maps."""
import numpy as np
import pytest

from cmt_deeplab_tf.analysis import attention_maps


def test_average_over_heads_is_the_mean_of_the_heads():
  per_head = np.array([[[1., 2.], [3., 4.]],
                       [[3., 4.], [5., 10.]]])           # [heads=2, 2, 2]
  np.testing.assert_allclose(attention_maps.average_over_heads(per_head),
                             [[2., 3.], [4., 7.]])
  np.testing.assert_allclose(
      attention_maps.average_over_heads(np.moveaxis(per_head, 0, -1), head_axis=-1),
      [[2., 3.], [4., 7.]])


def test_min_max_heatmap_maps_the_range_linearly_onto_0_255():
  # 1 is the minimum, 5 the maximum: 2 is a quarter of the range (a square root
  # would put it at 127.5), 3 half of it.
  heatmap = attention_maps.min_max_heatmap(np.array([[1., 2.], [3., 5.]]))
  np.testing.assert_array_equal(heatmap, [[0., 63.75], [127.5, 255.]])


def test_min_max_heatmap_has_no_smoothing_order_and_linearity_kept():
  rng = np.random.default_rng(0)
  values = rng.exponential(size=(7, 5)) ** 3  # Heavy-tailed, like attention.
  heatmap = attention_maps.min_max_heatmap(values)
  assert heatmap.min() == 0.0 and heatmap.max() == 255.0
  flat_values, flat_heat = values.ravel(), heatmap.ravel()
  np.testing.assert_array_equal(np.argsort(flat_values, kind='stable'),
                                np.argsort(flat_heat, kind='stable'))
  # Linear: every value's heatmap level is its fraction of the range times 255.
  low, high = flat_values.min(), flat_values.max()
  np.testing.assert_allclose(flat_heat, (flat_values - low) / (high - low) * 255,
                             rtol=1e-5, atol=1e-4)
  # ... hence invariant to a positive affine change of the values.
  np.testing.assert_allclose(attention_maps.min_max_heatmap(3.0 * values + 7.0),
                             heatmap, atol=1e-3)


def test_min_max_heatmap_normalises_each_map_of_a_stack_and_zeroes_constants():
  stack = np.stack([np.array([[0., 1.], [2., 4.]]),
                    np.array([[-8., -6.], [-4., -4.]]),
                    np.full((2, 2), 0.3)], axis=-1)       # [2, 2, K=3]
  heatmap = attention_maps.min_max_heatmap(stack)
  np.testing.assert_array_equal(heatmap[..., 0], [[0., 63.75], [127.5, 255.]])
  np.testing.assert_array_equal(heatmap[..., 1], [[0., 127.5], [255., 255.]])
  np.testing.assert_array_equal(heatmap[..., 2], np.zeros((2, 2)))


def test_layer_stride_of_32k_plus_1_crops():
  assert attention_maps.layer_stride((9, 9), (129, 129)) == 16
  assert attention_maps.layer_stride((33, 41), (129, 161)) == 4
  assert attention_maps.layer_stride((1, 5), (33, 129)) == 32
  with pytest.raises(ValueError, match='not a strided grid'):
    attention_maps.layer_stride((9, 9), (129, 161))


def test_upsample_keeps_grid_values_and_interpolates_between_them():
  maps = np.arange(9, dtype=np.float32).reshape(3, 3, 1)  # Grid of a 9x9 crop.
  upsampled = attention_maps.upsample_to_image(maps, 4, (7, 9))  # Padding cut.
  assert upsampled.shape == (7, 9, 1)
  np.testing.assert_allclose(upsampled[0:7:4, 0:9:4, 0], maps[:2, :, 0])
  assert upsampled[2, 0, 0] == pytest.approx((0 + 3) / 2)   # Between rows 0, 1.
  assert upsampled[0, 1, 0] == pytest.approx(0.25)           # A quarter to col 1.
  assert upsampled[6, 2, 0] == pytest.approx((3 + 4 + 6 + 7) / 4)


def test_jet_colormap_goes_from_dark_blue_over_green_to_dark_red():
  np.testing.assert_array_equal(attention_maps.colorize_heatmap(np.array([0.0])),
                                [[0, 0, 128]])
  np.testing.assert_array_equal(attention_maps.colorize_heatmap(np.array([255.0])),
                                [[128, 0, 0]])
  assert np.argmax(attention_maps.colorize_heatmap(np.array([127.5]))[0]) == 1


def test_attention_overlays_put_the_hot_spot_where_the_map_peaks():
  image = np.full((17, 17, 3), 90, np.uint8)
  maps = np.full((3, 3, 2), 0.1, np.float32)          # Stride 8 over 17x17.
  maps[2, 1, 0] = 0.9                                  # Peak -> pixel (16, 8).
  maps[0, 0, 1] = 0.0                                  # Trough -> pixel (0, 0).
  hot, cold = attention_maps.attention_overlays(image, maps, (17, 17), alpha=1.0)
  np.testing.assert_array_equal(hot[16, 8], [128, 0, 0])    # Level 255.
  np.testing.assert_array_equal(hot[0, 0], [0, 0, 128])     # Level 0.
  assert (hot[:9] == hot[0, 0]).all()  # Rows 0-8 only see grid rows 0, 1.
  np.testing.assert_array_equal(cold[0, 0], [0, 0, 128])
  np.testing.assert_array_equal(cold[16, 16], [128, 0, 0])  # Max of that map.
  unchanged, = attention_maps.attention_overlays(image, maps[..., :1], (17, 17),
                                                 alpha=0.0)
  np.testing.assert_array_equal(unchanged, image)
