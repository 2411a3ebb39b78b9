"""Corrupts one record of a TFRecord shard in place, for the bad-record tests.

Byte offsets come from the TFRecord framing (8-byte length, 4-byte CRC, data,
4-byte CRC), parsed here independently of TensorFlow's reader.
"""
import struct

import tensorflow as tf

from cmt_deeplab_tf.data import tfrecord_format


def record_spans(path):
  """[(start, end)] byte range of each record's data, from the framing."""
  data, spans, offset = open(path, 'rb').read(), [], 0
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    spans.append((offset + 12, offset + 12 + length))
    offset += length + 16
  return spans


def flip_bytes(path, record, count=64):
  start, end = record_spans(path)[record]
  data = bytearray(open(path, 'rb').read())
  middle = (start + end - count) // 2
  data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
  open(path, 'wb').write(bytes(data))


def truncate_in(path, record):
  start, end = record_spans(path)[record]
  with open(path, 'r+b') as f:
    f.truncate((start + end) // 2)


def replace_image(path, record, image_bytes=b'this is not an image'):
  """Rewrites the shard with record `record`'s encoded image replaced."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  example = tf.train.Example.FromString(records[record])
  example.features.feature[tfrecord_format.IMAGE_ENCODED].bytes_list.value[:] = [
      image_bytes]
  records[record] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as writer:
    for serialized in records:
      writer.write(serialized)
