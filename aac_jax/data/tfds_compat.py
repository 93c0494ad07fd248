"""Lets TFDS write splits larger than its in-memory shuffle buffer without TF.

When a split exceeds `tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE`
(1 GB), TFDS 4.9.10 spills records to 1,000 temporary bucket files through
`tf.io.gfile`, i.e. it needs TensorFlow, which this project does not install
(the default synthetic train split, Clotho and AudioCaps all exceed 1 GB).
`install()` gives TFDS's private bucket class plain-Python file I/O with the
same on-disk record format (key, length, bytes), so large splits build with
bounded memory.

It also makes TFDS serialise records deterministically (map fields in key
order): TFDS 4.9.10 calls `SerializeToString()`, whose map order depends on
the process, so the same example written by a Beam worker process and by the
single-machine build differed in bytes (the feature order of
`tf.train.Example`), while readers saw the same values. Every builder of
this package calls `install()` on import, Beam workers included (they import
the builder module to run the decoding step, fused with serialisation).
"""

import os
import resource
import struct

from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import shuffle as tfds_shuffle

# TFDS keeps one open file per bucket.
_FILES_NEEDED = tfds_shuffle.BUCKETS_NUMBER + 256


def _bucket_add(self, key: int, data: bytes) -> None:
  if not self._fobj:
    os.makedirs(os.path.dirname(self._path), exist_ok=True)
    self._fobj = open(self._path, 'wb')  # noqa: SIM115 (closed in flush)
  self._fobj.write(tfds_shuffle._hkey_to_bytes(key))  # noqa: SLF001
  self._fobj.write(struct.pack('=Q', len(data)))
  self._fobj.write(data)
  self._length += 1
  self._size += len(data)


def _bucket_flush(self) -> None:
  if self._fobj:
    self._fobj.close()
    self._fobj = None


def _bucket_read_values(self):
  self.flush()
  if not os.path.exists(self._path):
    return
  with open(self._path, 'rb') as fobj:
    while key_bytes := fobj.read(tfds_shuffle.HKEY_SIZE_BYTES):
      (size,) = struct.unpack('=Q', fobj.read(8))
      yield tfds_shuffle._read_hkey(key_bytes), fobj.read(size)  # noqa: SLF001


def _bucket_del_file(self) -> None:
  if os.path.exists(self._path):
    os.remove(self._path)


def _raise_open_file_limit() -> None:
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  wanted = _FILES_NEEDED if hard == resource.RLIM_INFINITY else min(hard, _FILES_NEEDED)
  if soft != resource.RLIM_INFINITY and soft < wanted:
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _serialize_example(self, example) -> bytes:
  return self.get_tf_example(example).SerializeToString(deterministic=True)


def install() -> None:
  """Makes TFDS's shuffle spill files TensorFlow-free, its records deterministic (idempotent)."""
  example_serializer.ExampleSerializer.serialize_example = _serialize_example
  bucket = tfds_shuffle._Bucket  # noqa: SLF001 (no public hook exists)
  if getattr(bucket, '_aac_jax_patched', False):
    return
  bucket.add = _bucket_add
  bucket.flush = _bucket_flush
  bucket.read_values = _bucket_read_values
  bucket.del_file = _bucket_del_file
  bucket._aac_jax_patched = True
  _raise_open_file_limit()
