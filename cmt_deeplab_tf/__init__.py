"""CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation (CVPR 2022).

Package layout follows the data flow:
  data/        panoptic formats, converters to TFRecords, the tf.data pipeline.
  modeling/    layers, backbones, pixel decoder, clustering mask transformer, heads.
  losses/      Hungarian matching and the MaX-DeepLab / CMT-DeepLab objectives.
  ops/         post-processing of model outputs into panoptic maps, their colours.
  evaluation/  PQ / SQ / RQ / mIoU and submission formats.
  training/    the absl + gin + Orbit training system.
  serving/     SavedModel export and inference.
  analysis/    visualisations, cost table, ablation sweeps.
"""
