"""Figure assembly: grid geometry, tile placement, row selection and matching."""
import numpy as np
import pytest

from cmt_deeplab_tf.analysis import attention_maps
from cmt_deeplab_tf.analysis import figures
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib

INFO = dataset_info_lib.get_dataset_info('synthetic')
DIVISOR = INFO.label_divisor
PAD, LINE = 4, 14  # Layout constants, restated: the figure module's PAD, LINE_HEIGHT.
SIZE = 33          # Image = padded crop: layers at strides 16, 8, 4 are 3, 5, 9 cells.


def _solid(color, height=10, width=12):
  return np.full((height, width, 3), color, np.uint8)


def _tile_origin(top, row, column, height, width):
  """Hand-derived top-left corner of tile (row, column) below a band of `top` px."""
  return PAD + column * (width + PAD), top + row * (height + PAD)


def test_grid_has_rows_times_columns_tiles_where_expected():
  colors_by_tile = [[(10 * r + c, 100 + c, 200 - r) for c in range(3)]
                    for r in range(2)]
  tiles = [[_solid(color) for color in row] for row in colors_by_tile]
  figure = np.asarray(figures.assemble_grid(tiles, ['a', 'b', 'c'], 'T'))
  top = PAD + LINE + LINE  # One title line, then the column titles.
  assert figure.shape == (top + 2 * (10 + PAD), PAD + 3 * (12 + PAD), 3)
  for r, row in enumerate(colors_by_tile):
    for c, color in enumerate(row):
      x, y = _tile_origin(top, r, c, 10, 12)
      np.testing.assert_array_equal(figure[y:y + 10, x:x + 12], _solid(color))
  # Between tiles: background.
  assert (figure[top + 10:top + 10 + PAD, PAD:PAD + 12] == 255).all()


def test_long_titles_wrap_and_push_the_tiles_down():
  tiles = [[_solid((1, 2, 3))]]
  short = np.asarray(figures.assemble_grid(tiles, ['a'], 'T'))
  long_title = np.asarray(figures.assemble_grid(tiles, ['a'], 'word ' * 20))
  long_column = np.asarray(figures.assemble_grid(tiles, ['a b c d e f g'], 'T'))
  for figure in (long_title, long_column):
    assert figure.shape[1] == short.shape[1]
    assert (figure.shape[0] - short.shape[0]) % LINE == 0
    assert figure.shape[0] - short.shape[0] >= 2 * LINE
    # The tile is still the last band of the figure.
    np.testing.assert_array_equal(figure[-PAD - 10:-PAD, PAD:PAD + 12],
                                  _solid((1, 2, 3)))


def test_grid_rejects_ragged_rows_and_unequal_tiles():
  with pytest.raises(ValueError, match='one per column'):
    figures.assemble_grid([[_solid(0)], [_solid(0), _solid(0)]], ['a'], 'T')
  with pytest.raises(ValueError, match='must have the shape'):
    figures.assemble_grid([[_solid(0), _solid(0, height=11)]], ['a', 'b'], 'T')
  with pytest.raises(ValueError, match='at least one row and one column'):
    figures.assemble_grid([], ['a'], 'T')
  with pytest.raises(ValueError, match='at least one row and one column'):
    figures.assemble_grid([[]], [], 'T')


def test_select_centers_one_per_segment_by_decreasing_score():
  square, sky, disc = 1, 4, 0  # Synthetic train ids.
  ids = np.array([-1, sky * DIVISOR, square * DIVISOR + 1, sky * DIVISOR,
                  disc * DIVISOR + 1])
  scores = np.array([0.99, 0.7, 0.9, 0.8, 0.6])
  selected = figures.select_centers(ids, scores, 3, INFO)
  # Cluster 0 has no segment; cluster 1 shares the sky segment with the better 3.
  assert [c.cluster for c in selected] == [2, 3, 4]
  assert [c.segment_id for c in selected] == [square * DIVISOR + 1, sky * DIVISOR,
                                              disc * DIVISOR + 1]
  assert selected[0].label == f'#2 {INFO.class_names[square]} 0.90'
  assert [c.cluster for c in figures.select_centers(ids, scores, 1, INFO)] == [2]


def test_match_clusters_by_iou_hand_case():
  cluster_map = np.array([[0, 0, 1, 1],
                          [0, 0, 1, 1],
                          [2, 2, 2, 2],
                          [2, 2, 2, 2]])
  left_half = np.zeros((4, 4), bool)
  left_half[:, :2] = True                 # IoU: cluster 0 4/8, 1 0, 2 2/10.
  bottom_right = np.zeros((4, 4), bool)
  bottom_right[3, 2:] = True              # IoU: cluster 2 2/8.
  clusters, ious = figures.match_clusters_by_iou(
      np.stack([left_half, bottom_right]), cluster_map, 4)
  np.testing.assert_array_equal(clusters, [0, 2])
  np.testing.assert_allclose(ious, [0.5, 0.25])


def _scene():
  """An image with two segments and per-layer maps peaking at known cells."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
  panoptic = np.full((SIZE, SIZE), 4 * DIVISOR)           # Sky ...
  panoptic[5:15, 5:15] = 1 * DIVISOR + 1                  # ... and one square.
  centers = [figures.SelectedCenter(3, 1 * DIVISOR + 1, 0.9, 'square'),
             figures.SelectedCenter(1, 4 * DIVISOR, 0.8, 'sky')]
  # Layer l has a (1 + 2^(l+1))-cell grid; center 3 peaks at cell (1, 0) and
  # center 1 at cell (0, 1) of every layer, all other values equal.
  maps = []
  for cells in (3, 5, 9):
    layer = np.full((cells, cells, 4), 0.2, np.float32)
    layer[1, 0, 3] = 0.7
    layer[0, 1, 1] = 0.7
    maps.append(layer)
  return image, panoptic, centers, maps


def test_clustering_figure_places_each_layer_and_center_where_expected():
  image, panoptic, centers, maps = _scene()
  figure = np.asarray(figures.clustering_figure(
      image, panoptic, centers, maps, (SIZE, SIZE), INFO, 'tiny', tile_size=SIZE,
      alpha=1.0))
  columns, rows = 4, 2  # Segment + 3 layers; 2 centers.
  assert figure.shape[1] == PAD + columns * (SIZE + PAD)
  top = figure.shape[0] - rows * (SIZE + PAD)
  hottest = attention_maps.JET_COLORMAP[255]
  for row, (peak_row, peak_col) in enumerate([(1, 0), (0, 1)]):
    for layer, stride in enumerate((16, 8, 4)):
      x, y = _tile_origin(top, row, layer + 1, SIZE, SIZE)
      tile = figure[y:y + SIZE, x:x + SIZE]
      hot = np.argwhere((tile == hottest).all(-1))
      # With alpha 1 the tile is the colour map alone, peaking on the grid cell.
      assert [stride * peak_row, stride * peak_col] in hot.tolist()
      assert len(hot) == 1
  # Column 0: the segment; inside it the image is blended, outside dimmed.
  x, y = _tile_origin(top, 0, 0, SIZE, SIZE)
  segment_tile = figure[y:y + SIZE, x:x + SIZE]
  np.testing.assert_array_equal(segment_tile[20:, 20:],
                                (image[20:, 20:] * 0.4).astype(np.uint8))


def test_attention_figure_columns_with_and_without_a_compared_model():
  image, panoptic, centers, maps = _scene()
  own = figures.attention_figure(image, panoptic, centers, 'tiny', maps[-1],
                                 maps[-1], (SIZE, SIZE), INFO, tile_size=SIZE)
  compared = figures.ComparedModel('max_deeplab_s', maps[0], [0, 2], [0.5, 0.25])
  versus = figures.attention_figure(image, panoptic, centers, 'tiny', maps[-1],
                                    maps[-1], (SIZE, SIZE), INFO, compared,
                                    tile_size=SIZE)
  for figure in (own, versus):
    assert figure.size[0] == PAD + 3 * (SIZE + PAD)
    assert (figure.size[1] - 2 * (SIZE + PAD) - PAD - LINE) % LINE == 0


def test_attention_figure_without_compared_model_says_so_in_its_title(monkeypatch):
  titles = []
  monkeypatch.setattr(figures, 'assemble_grid',
                      lambda tiles, column_titles, title: titles.append(
                          (column_titles, title)))
  image, panoptic, centers, maps = _scene()
  figures.attention_figure(image, panoptic, centers, 'tiny', maps[-1], maps[-1],
                           (SIZE, SIZE), INFO, tile_size=SIZE)
  figures.attention_figure(image, panoptic, centers, 'tiny', maps[-1], maps[-1],
                           (SIZE, SIZE), INFO,
                           figures.ComparedModel('max_deeplab_s', maps[0], [0, 2],
                                                 [0.5, 0.25]), tile_size=SIZE)
  (own_columns, own_title), (versus_columns, versus_title) = titles
  assert own_columns == ['predicted segment', 'tiny clustering',
                         'tiny cross-attention']
  assert 'No MaX-DeepLab run was given' in own_title
  assert versus_columns == ['predicted segment', 'tiny cross-attention',
                            'max_deeplab_s cross-attention']
  assert 'Figs. 6-8' in versus_title and 'No MaX' not in versus_title
