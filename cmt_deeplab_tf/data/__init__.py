"""Panoptic data: on-disk formats, converters to TFRecords, the tf.data pipeline."""
