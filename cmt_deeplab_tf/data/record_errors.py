"""Bad TFRecords named by shard and record index, and optionally skipped.

A record is bad when the reader cannot read it (its checksum fails, or the
shard ends inside it) or when it cannot be decoded into an example (its image
or label is not an image, a field is missing, the sizes disagree). TensorFlow's
errors name neither the shard nor the record, so the pipeline carries both:

- `read_shard` yields `(shard, index, serialized, readable)` per record. After a
  read error TensorFlow's reader gives up on the shard; the bytes it read are
  counted (each record takes its length + 16 bytes of framing), so a shard that
  ends before its file size does yields one more element, `readable=False`, at
  the index where reading failed.
- `map_records` applies the decoding to each record in a one-element dataset
  that drops an error (`ignore_errors`), so a failed record becomes a marked
  element instead of an error; a sequential `scan` counts read and bad records,
  and stops the pipeline with an error naming the bad records (shard#index and
  why) once more than `max_bad_fraction` of them are bad (of at least
  `MIN_COUNTED` records; `0`: at the first).
  Good elements carry the running count of skipped records (`SKIPPED_RECORDS`).
- `named_record_errors` turns that error into a `BadRecordsError`, one line.
"""
import contextlib
import re
from typing import Callable, Dict, Sequence

import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf import common

_FRAMING_BYTES = 16  # uint64 length, its CRC32C, and the data's CRC32C.
_MARK = 'Bad TFRecords: '
_END = ' (end of list)'
_MAX_NAMED = 20
# The bad fraction is of max(records read, MIN_COUNTED): early bad records do not
# stop a run with a fraction > 0 alone, `max_bad_fraction * MIN_COUNTED` of them do.
MIN_COUNTED = 100
UNREADABLE = 'unreadable (corrupt or truncated)'
UNDECODABLE = 'undecodable (not a valid example)'


class BadRecordsError(cli.UserError):
  """Input records could not be read or decoded."""


def read_shard(shard: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
  """(shard string [], index int64 [], serialized string [], readable bool []) per
  record of the uncompressed TFRecord file `shard` of `size` bytes."""
  records = tf.data.TFRecordDataset(shard).map(lambda r: (r, True)).ignore_errors()
  end = tf.data.Dataset.from_tensors((tf.constant(''), False))

  def count(state, element):
    index, consumed = state
    serialized, is_record = element
    length = tf.cast(tf.strings.length(serialized), tf.int64) + _FRAMING_BYTES
    consumed += tf.where(is_record, length, tf.constant(0, tf.int64))
    keep = is_record | (consumed != tf.cast(size, tf.int64))  # End marker: short read.
    return ((index + 1, consumed),
            (shard, index, serialized, is_record, keep))

  return (records.concatenate(end)
          .scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count)
          .filter(lambda *element: element[-1])
          .map(lambda shard, index, serialized, readable, keep:
               (shard, index, serialized, readable)))


def _blank(spec):
  return tf.zeros([d or 0 for d in spec.shape], spec.dtype)


def map_records(dataset: tf.data.Dataset,
                fn: Callable[[tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]],
                max_bad_fraction: float, deterministic: bool) -> tf.data.Dataset:
  """Maps `fn(serialized, seed)` over `((shard, index, serialized, readable), seed)`
  elements, skipping bad records up to `max_bad_fraction`.

  Returns:
    The dataset of `fn`'s dicts, each with SKIPPED_RECORDS int64 [] added (the
    bad records skipped so far by this pipeline).

  Raises (when iterated):
    tf.errors.InvalidArgumentError: once more than `max_bad_fraction` of
      max(records read, MIN_COUNTED) are bad (0: at the first bad record),
      naming up to 20 of them; see `named_record_errors`.
  """
  spec = dataset.take(0).map(lambda record, seed: fn(record[2], seed)).element_spec
  blank = tf.nest.map_structure(_blank, spec)

  def attempt(record, seed):
    shard, index, serialized, readable = record
    good = (tf.data.Dataset.from_tensors((serialized, seed))
            .filter(lambda *_: readable)
            .map(lambda s, seed: (fn(s, seed), True)).ignore_errors())
    bad = tf.data.Dataset.from_tensors((blank, False))
    reason = tf.where(readable, UNDECODABLE, UNREADABLE)
    return good.concatenate(bad).take(1).map(
        lambda features, ok: (features, ok, tf.strings.join(
            [shard, '#', tf.strings.as_string(index), ' ', reason])))


  def count(state, element):
    seen, bad, names = state
    features, ok, name = element
    seen += 1
    bad += tf.cast(~ok, tf.int64)
    names = tf.cond(ok | (bad > _MAX_NAMED), lambda: names,
                    lambda: tf.strings.join([names, name, '; ']))
    limit = max_bad_fraction * tf.maximum(tf.cast(seen, tf.float64), MIN_COUNTED)
    too_many = tf.cast(bad, tf.float64) > limit
    message = tf.strings.join([
        _MARK, tf.strings.as_string(bad), ' of ', tf.strings.as_string(seen),
        ' records read are bad, ' + (
            f'more than panoptic_dataset.max_bad_fraction = {max_bad_fraction:g}: '
            if max_bad_fraction else
            'stopping at the first (panoptic_dataset.skip_bad_records = True skips '
            'them in training): '), names, _END])
    with tf.control_dependencies([tf.debugging.Assert(~too_many, [message])]):
      skipped = tf.identity(bad)
    def log_bad():
      with tf.control_dependencies([tf.print('Skipping bad TFRecord', name,
                                             output_stream=tf.compat.v1.logging.warning)]):
        return tf.constant(True)
    with tf.control_dependencies([tf.cond(ok, lambda: tf.constant(True), log_bad)]):
      features = dict(features, **{common.SKIPPED_RECORDS: skipped})
    return (seen, bad, names), (features, ok)

  zero = tf.constant(0, tf.int64)
  return (dataset.interleave(attempt, cycle_length=tf.data.AUTOTUNE,
                             num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=deterministic)
          .scan((zero, zero, tf.constant('')), count)
          .filter(lambda features, ok: ok)
          .map(lambda features, ok: features))


def shard_sizes(files: Sequence[str]) -> Sequence[int]:
  """Byte size of each file (`read_shard` detects a read that stops short)."""
  return [tf.io.gfile.stat(f).length for f in files]


@contextlib.contextmanager
def named_record_errors():
  """Re-raises the pipeline's bad-record error as a one-line `BadRecordsError`."""
  try:
    yield
  except tf.errors.InvalidArgumentError as e:
    match = re.search(re.escape(_MARK) + r'(.*?)' + re.escape(_END), e.message,
                      flags=re.DOTALL)
    if not match:
      raise
    raise BadRecordsError(_MARK + match.group(1).rstrip('; ')) from None
