"""Figures of the CMT-DeepLab supplement, §3 "Visual Comparison", drawn with PIL.

Both figures are grids of equal tiles under a title and a row of column titles;
each row is one cluster center matched to a predicted segment:

- `clustering_figure` (supplement Figs. 2-5): column 0 shows the image with the
  center's predicted segment; column l shows the center's clustering result
  (pixel-cluster assignment, softmax over clusters) at transformer layer l.
- `attention_figure` (supplement Figs. 6-8): column 0 as above, then one column
  per compared map of the LAST layer, e.g. CMT-DeepLab's and MaX-DeepLab's
  cross-attention (softmax over pixels) for the same segment. Each model uses
  its own center for the segment (`match_clusters_by_iou`). Without a compared
  model, the CMT model's own last-layer clustering result stands next to its
  cross-attention, and the figure's title says so.

Maps are drawn with the supplement's recipe (`attention_maps`). Layout, in
pixels: `PAD` around and between tiles, the title band (`LINE_HEIGHT` per line
of the title, wrapped to the figure's width), the column-title band
(`LINE_HEIGHT` per line of the longest column title, wrapped to the tile
width), then the tiles: tile (row r, column c) of size w x h has its top-left
corner at x = PAD + c * (w + PAD), y = PAD + title_height + header_height +
r * (h + PAD).
"""
import collections
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from PIL import ImageDraw

from cmt_deeplab_tf.analysis import attention_maps
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.ops import colors

PAD = 4
LINE_HEIGHT = 14
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
LABEL_COLOR = (255, 255, 255)
LABEL_BACKGROUND = (0, 0, 0)
# The segment tile: the image outside the segment at this brightness, the
# segment blended with its panoptic colour.
OUTSIDE_SEGMENT_BRIGHTNESS = 0.4
SEGMENT_ALPHA = 0.5

# One row: the center (cluster index), its segment's panoptic id, class
# confidence and label text.
SelectedCenter = collections.namedtuple(
    'SelectedCenter', ['cluster', 'segment_id', 'score', 'label'])
# One column of maps: its title, the maps float [h, w, N] of one layer of one
# model, per row the cluster whose map it shows, and optional per-row labels.
MapColumn = collections.namedtuple('MapColumn',
                                   ['title', 'maps', 'clusters', 'labels'],
                                   defaults=(None,))
# The model compared with CMT-DeepLab in `attention_figure`: its name, its
# last layer's cross-attention float [h, w, N'], and per row its matched
# cluster and that cluster's IoU with the row's segment.
ComparedModel = collections.namedtuple('ComparedModel',
                                       ['name', 'attention', 'clusters', 'ious'])


def select_centers(segment_panoptic_ids: np.ndarray, segment_scores: np.ndarray,
                   num_centers: int,
                   info: dataset_info_lib.DatasetInfo) -> List[SelectedCenter]:
  """The centers matched to the top-`num_centers` predicted segments.

  A stuff segment may merge several centers; it is shown once, with its
  highest-scoring center. Segments come in decreasing class confidence (ties:
  lower cluster index first).

  Args:
    segment_panoptic_ids: int [N], per center its segment's panoptic id, -1 if
      it has none (post-processing's SEGMENT_PANOPTIC_IDS).
    segment_scores: float [N], per center its class confidence (SEGMENT_SCORES).
    num_centers: the number of rows wanted.
    info: the class table, for the labels.
  """
  order = np.argsort(-np.asarray(segment_scores), kind='stable')
  selected, seen = [], set()
  for cluster in order:
    segment_id = int(segment_panoptic_ids[cluster])
    if segment_id < 0 or segment_id in seen:
      continue
    seen.add(segment_id)
    score = float(segment_scores[cluster])
    class_name = info.class_names[segment_id // info.label_divisor]
    selected.append(SelectedCenter(int(cluster), segment_id, score,
                                   f'#{cluster} {class_name} {score:.2f}'))
  return selected[:num_centers]


def match_clusters_by_iou(segment_masks: np.ndarray, cluster_map: np.ndarray,
                          num_clusters: int) -> Tuple[np.ndarray, np.ndarray]:
  """Per segment, the cluster of another model whose region overlaps it best.

  Args:
    segment_masks: bool [K, H, W], the segments to match.
    cluster_map: int [H, W], per pixel the other model's argmax cluster.
    num_clusters: that model's N.

  Returns:
    (clusters int [K], ious float [K]): the best cluster by intersection over
    union and that IoU (ties: lower cluster index).
  """
  regions = cluster_map[np.newaxis] == np.arange(num_clusters)[:, None, None]
  masks = segment_masks[:, np.newaxis]                        # [K, 1, H, W]
  intersection = np.sum(masks & regions[np.newaxis], axis=(2, 3))
  union = np.sum(masks | regions[np.newaxis], axis=(2, 3))
  ious = intersection / np.maximum(union, 1)                  # [K, N]
  clusters = np.argmax(ious, axis=1)
  return clusters, ious[np.arange(len(clusters)), clusters]


def fit_tile(image: np.ndarray, tile_size: int) -> np.ndarray:
  """Resizes uint8 [H, W, 3] (bilinear) so that its longer side is tile_size."""
  height, width = image.shape[:2]
  scale = tile_size / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def label_tile(tile: np.ndarray, text: str) -> np.ndarray:
  """Writes text in the top-left corner of a uint8 [h, w, 3] tile, on a dark box."""
  canvas = Image.fromarray(tile)
  draw = ImageDraw.Draw(canvas)
  _, _, right, bottom = draw.textbbox((2, 1), text)
  draw.rectangle((0, 0, right + 2, bottom + 2), fill=LABEL_BACKGROUND)
  draw.text((2, 1), text, fill=LABEL_COLOR)
  return np.asarray(canvas)


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw) -> List[str]:
  """Splits text at spaces into lines of at most `width` pixels (or one word)."""
  lines = []
  for word in text.split():
    if lines and draw.textlength(f'{lines[-1]} {word}') <= width:
      lines[-1] = f'{lines[-1]} {word}'
    else:
      lines.append(word)
  return lines


def assemble_grid(tiles: Sequence[Sequence[np.ndarray]],
                  column_titles: Sequence[str], title: str) -> Image.Image:
  """Lays out rows of equal uint8 [h, w, 3] tiles under the titles.

  See the module docstring for the geometry.

  Raises:
    ValueError: if there are no tiles or columns, rows differ in length from
      the column titles, or tiles differ in size.
  """
  if not tiles or not column_titles:
    raise ValueError('A figure needs at least one row and one column of tiles.')
  tile_shape = tiles[0][0].shape
  for row in tiles:
    if len(row) != len(column_titles):
      raise ValueError(f'Every row needs {len(column_titles)} tiles (one per column '
                       f'title), got {len(row)}.')
    if any(tile.shape != tile_shape for tile in row):
      raise ValueError(f'All tiles must have the shape {tile_shape}, got '
                       f'{[tile.shape for tile in row]}.')
  tile_height, tile_width = tile_shape[:2]
  width = PAD + len(column_titles) * (tile_width + PAD)
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  title_lines = _wrap(title, width - 2 * PAD, measure)
  header_lines = [_wrap(text, tile_width, measure) for text in column_titles]
  header_top = PAD + len(title_lines) * LINE_HEIGHT
  top = header_top + max(len(lines) for lines in header_lines) * LINE_HEIGHT
  figure = Image.new('RGB', (width, top + len(tiles) * (tile_height + PAD)),
                     BACKGROUND)
  draw = ImageDraw.Draw(figure)
  for line_index, line in enumerate(title_lines):
    draw.text((PAD, PAD + line_index * LINE_HEIGHT), line, fill=TEXT_COLOR)
  for column, lines in enumerate(header_lines):
    for line_index, line in enumerate(lines):
      draw.text((PAD + column * (tile_width + PAD),
                 header_top + line_index * LINE_HEIGHT), line, fill=TEXT_COLOR)
  for row_index, row in enumerate(tiles):
    for column, tile in enumerate(row):
      figure.paste(Image.fromarray(tile), (PAD + column * (tile_width + PAD),
                                           top + row_index * (tile_height + PAD)))
  return figure


def segment_tile(image: np.ndarray, panoptic: np.ndarray, segment_id: int,
                 info: dataset_info_lib.DatasetInfo) -> np.ndarray:
  """uint8 [H, W, 3]: the image, dimmed outside the segment, coloured inside it."""
  inside = (panoptic == segment_id)[..., np.newaxis]
  highlighted = colors.overlay(image, colors.colorize_panoptic(panoptic, info),
                               SEGMENT_ALPHA)
  dimmed = (image * OUTSIDE_SEGMENT_BRIGHTNESS).astype(np.uint8)
  return np.where(inside, highlighted, dimmed)


def center_map_figure(image: np.ndarray, panoptic: np.ndarray,
                      centers: Sequence[SelectedCenter],
                      columns: Sequence[MapColumn], padded_size: Sequence[int],
                      info: dataset_info_lib.DatasetInfo, title: str,
                      tile_size: int = 160, alpha: float = 0.5) -> Image.Image:
  """The common grid of both figures: segment tile, then one map per column.

  Args:
    image: uint8 [H, W, 3].
    panoptic: int [H, W], the predicted panoptic map.
    centers: the rows (`select_centers`).
    columns: the map columns; `clusters` has one entry per row.
    padded_size: (H', W'), the crop the models ran on.
    info: the class table.
    title: the figure title.
    tile_size: the longer side of every tile, in pixels.
    alpha: the heatmaps' weight over the image.
  """
  rows = [[label_tile(fit_tile(segment_tile(image, panoptic, center.segment_id,
                                            info), tile_size), center.label)]
          for center in centers]
  for column in columns:
    overlays = attention_maps.attention_overlays(
        image, column.maps[..., list(column.clusters)], padded_size, alpha)
    labels = column.labels or [None] * len(rows)
    for row, overlay, label in zip(rows, overlays, labels):
      tile = fit_tile(overlay, tile_size)
      row.append(label_tile(tile, label) if label else tile)
  return assemble_grid(rows, ['predicted segment'] + [c.title for c in columns],
                       title)


def clustering_figure(image: np.ndarray, panoptic: np.ndarray,
                      centers: Sequence[SelectedCenter],
                      clustering_maps: Sequence[np.ndarray],
                      padded_size: Sequence[int],
                      info: dataset_info_lib.DatasetInfo, model_name: str,
                      tile_size: int = 160, alpha: float = 0.5) -> Image.Image:
  """Supplement Figs. 2-5: each center's clustering result at every layer.

  Args:
    image, panoptic, centers, padded_size, info, tile_size, alpha: as in
      `center_map_figure`.
    clustering_maps: per transformer layer, float [h_l, w_l, N] head-averaged
      clustering results (softmax over the N centers) of this image.
    model_name: named in the title.
  """
  clusters = [center.cluster for center in centers]
  columns = [
      MapColumn(f'layer {index + 1}, stride '
                f'{attention_maps.layer_stride(maps.shape[:2], padded_size):g}',
                maps, clusters)
      for index, maps in enumerate(clustering_maps)]
  title = (f'{model_name}: clustering results (softmax over centers) of the '
           f'centers of the top-{len(centers)} predicted segments at every '
           'transformer layer (CMT-DeepLab supplement Figs. 2-5)')
  return center_map_figure(image, panoptic, centers, columns, padded_size, info,
                           title, tile_size, alpha)


def attention_figure(image: np.ndarray, panoptic: np.ndarray,
                     centers: Sequence[SelectedCenter], model_name: str,
                     clustering_map: np.ndarray, attention_map: np.ndarray,
                     padded_size: Sequence[int],
                     info: dataset_info_lib.DatasetInfo,
                     compared: Optional[ComparedModel] = None, tile_size: int = 160,
                     alpha: float = 0.5) -> Image.Image:
  """Supplement Figs. 6-8: last-layer cross-attention, CMT vs another model.

  With `compared` (e.g. a MaX-DeepLab-S run) the columns are the CMT model's
  cross-attention and the compared model's, for the same predicted segment
  (the compared model's best-IoU center, labelled with its IoU). Without it,
  the CMT model's own last-layer clustering result is compared with its own
  cross-attention, and the title says so.

  Args:
    image, panoptic, centers, padded_size, info, tile_size, alpha: as in
      `center_map_figure`.
    model_name: the CMT model's name.
    clustering_map: float [h, w, N], its last layer's clustering result.
    attention_map: float [h, w, N], its last layer's cross-attention (softmax
      over pixels).
    compared: the other model, or None.
  """
  clusters = [center.cluster for center in centers]
  cmt_attention = MapColumn(f'{model_name} cross-attention', attention_map, clusters)
  if compared is None:
    columns = [MapColumn(f'{model_name} clustering', clustering_map, clusters),
               cmt_attention]
    title = (f'{model_name}, last layer: clustering result (softmax over centers) '
             'vs cross-attention (softmax over pixels) of the same center. No '
             'MaX-DeepLab run was given, so this is not the CMT vs MaX-DeepLab '
             'comparison of supplement Figs. 6-8.')
  else:
    labels = [f'#{cluster} IoU {iou:.2f}'
              for cluster, iou in zip(compared.clusters, compared.ious)]
    columns = [cmt_attention,
               MapColumn(f'{compared.name} cross-attention', compared.attention,
                         compared.clusters, labels)]
    title = (f'Last-layer cross-attention (softmax over pixels), {model_name} vs '
             f'{compared.name}, for the same predicted segment ({compared.name}: '
             'its best-IoU center) (CMT-DeepLab supplement Figs. 6-8)')
  return center_map_figure(image, panoptic, centers, columns, padded_size, info,
                           title, tile_size, alpha)
