"""SliceRecord -> tf.Example in the format of preprocessing/features.py. Used by the Beam
conversion (training data) and by predict.py (serving requests), so both build the same bytes.

One serializer: `example_bytes` writes the protobuf wire format directly (no proto objects, one
copy of the pixels, no TensorFlow, so Beam workers that only convert start without it). Parsing
its bytes gives the message a field-by-field tf.train.Example build gives (the reference in
tests/slice_helpers.py; tests/test_nifti_slices.py).
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence

import numpy as np

from preprocessing import features as F
from preprocessing.slices import SliceRecord


def label_stats(label: np.ndarray):
    """(has_liver, has_tumor, liver_fraction, tumor_fraction) of one label slice."""
    n = label.size
    liver = int(np.count_nonzero(label))          # labels are 0, 1, 2: liver incl. tumour
    tumor = int(np.count_nonzero(label == 2))
    return int(liver > 0), int(tumor > 0), liver / n, tumor / n


# --- protobuf wire format, written directly ------------------------------------------------------
# Example { Features features = 1; }  Features { map<string, Feature> feature = 1; }
# map entry { string key = 1; Feature value = 2; }
# Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3 } }
# BytesList { repeated bytes value = 1; }  FloatList / Int64List { repeated ... value = 1 [packed] }

def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """Tag and length of a length-delimited field."""
    return _varint((number << 3) | 2) + _varint(payload_len)


def _entry(key: str, kind: int, list_payload: Sequence[bytes]) -> list:
    """Parts of one map entry; `list_payload` is the BytesList/FloatList/Int64List body."""
    list_len = sum(len(p) for p in list_payload)
    feature = [_field(kind, list_len)]
    feature_len = len(feature[0]) + list_len
    key_b = key.encode()
    key_part = _field(1, len(key_b)) + key_b
    value_head = _field(2, feature_len)
    entry_len = len(key_part) + len(value_head) + feature_len
    return [_field(1, entry_len), key_part, value_head, *feature, *list_payload]


def _bytes_entry(key: str, value) -> list:
    n = value.nbytes if isinstance(value, (memoryview, np.ndarray)) else len(value)
    return _entry(key, 1, [_field(1, n), value])


def _int_entry(key: str, values) -> list:
    body = b"".join(_varint(int(v)) for v in np.ravel(values))
    return _entry(key, 3, [_field(1, len(body)), body])


def _float_entry(key: str, values) -> list:
    values = np.ravel(values)
    body = struct.pack(f"<{len(values)}f", *(float(v) for v in values))
    return _entry(key, 2, [_field(1, len(body)), body])


def example_bytes(case_id: str, spacing, image: np.ndarray, slice_index: int, num_slices: int,
                  label: Optional[np.ndarray] = None) -> bytes:
    """Serialized tf.Example, the same message as slice_to_example(...).SerializeToString()
    (map order aside). `image` int16 [H, W, K] and `label` uint8 [H, W], C-contiguous."""
    image = np.ascontiguousarray(image, dtype=F.IMAGE_DTYPE)
    parts = [
        *_bytes_entry(F.IMAGE, memoryview(image).cast("B")),
        *_int_entry(F.IMAGE_SHAPE, image.shape),
        *_bytes_entry(F.VOLUME_ID, case_id.encode()),
        *_int_entry(F.SLICE_INDEX, slice_index),
        *_int_entry(F.NUM_SLICES, num_slices),
        *_float_entry(F.SPACING, spacing),
    ]
    if label is not None:
        label = np.ascontiguousarray(label, dtype=F.LABEL_DTYPE)
        has_liver, has_tumor, liver_fraction, tumor_fraction = label_stats(label)
        parts += [
            *_bytes_entry(F.LABEL, memoryview(label).cast("B")),
            *_int_entry(F.HAS_LIVER, has_liver),
            *_int_entry(F.HAS_TUMOR, has_tumor),
            *_float_entry(F.LIVER_FRACTION, liver_fraction),
            *_float_entry(F.TUMOR_FRACTION, tumor_fraction),
        ]
    features_len = sum(len(p) if not isinstance(p, memoryview) else p.nbytes for p in parts)
    return b"".join([_field(1, features_len)] + parts)


def slice_example_bytes(case_id: str, spacing, record: SliceRecord) -> bytes:
    """`example_bytes` of one SliceRecord: the serving requests of an exported model."""
    return example_bytes(case_id, spacing, record.image, record.slice_index, record.num_slices,
                         record.label)
