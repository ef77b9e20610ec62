"""preprocessing_fn under real tf.Transform (Beam, in memory): both normalizations, the targets
of both classes modes, and the serving path (the Transform graph applied to raw examples inside
a model) giving the same features as the Transform run."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from preprocessing import features as F
from preprocessing.slices import SliceRecord
from slice_helpers import slice_to_example
from preprocessing.transform import preprocessing_fn
from schema import SCHEMA_PATH

SHAPE = (16, 16, 3)
WINDOW = (-200.0, 250.0)


def _raw_examples(n=12, foreground=True):
    """n slices; with foreground=False every label is 0 (no liver, no tumour anywhere)."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        label = np.zeros(SHAPE[:2], np.uint8)
        if foreground:
            label[4:10, 4:10] = 1 if i % 3 else 0
            label[5:7, 5:7] = 2 if i % 4 == 0 and i % 3 else label[5:7, 5:7]
        image = rng.integers(-200, 250, SHAPE).astype(np.int16)
        image[label > 0] = 60 + rng.integers(-10, 10, (int((label > 0).sum()), 3))
        out.append(slice_to_example(f"volume-{i % 2}", (0.7, 0.7, 2.0),
                                    SliceRecord(image, label, i, n)))
    return out


def _analyze_and_transform(tmp_path, normalization, classes=None, raw=None):
    schema = text_format.Parse(open(SCHEMA_PATH).read(), schema_pb2.Schema())
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    raw = _raw_examples() if raw is None else raw
    parsed = tf.io.parse_example([e.SerializeToString() for e in raw], spec)
    instances = [{k: v[i].numpy() for k, v in parsed.items()} for i in range(len(raw))]
    config = {"image_shape": list(SHAPE), "window": list(WINDOW),
              "normalization": normalization}
    if classes is not None:   # None: the key absent, as in configs written before it existed
        config["classes"] = classes
    with tft_beam.Context(temp_dir=str(tmp_path / "tft_tmp"), force_tf_compat_v1=False):
        import apache_beam as beam
        with beam.Pipeline(argv=["--runner=FnApiRunner", "--direct_running_mode=in_memory"]) as p:
            data = p | beam.Create(instances, reshuffle=False)
            (_, _), transform_fn = (
                (data, dataset_metadata.DatasetMetadata(schema))
                | tft_beam.AnalyzeAndTransformDataset(
                    lambda inputs: preprocessing_fn(inputs, config),
                    output_record_batches=False))
            _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "transform_fn"))
    return raw, parsed, tft.TFTransformOutput(str(tmp_path / "transform_fn"))


@pytest.mark.parametrize("normalization", ["window", "zscore"])
def test_serving_path_equals_transform(tmp_path, normalization):
    raw, parsed, output = _analyze_and_transform(tmp_path, normalization)
    layer = output.transform_features_layer()
    # Serving gets the image only; the graph must not need the label.
    served = layer({F.IMAGE: parsed[F.IMAGE]})
    batch = layer(dict(parsed))
    np.testing.assert_allclose(served[F.IMAGE].numpy(), batch[F.IMAGE].numpy(), atol=1e-6)
    image = batch[F.IMAGE].numpy()
    assert image.shape == (len(raw), *SHAPE)
    hu = np.stack([np.frombuffer(e.features.feature[F.IMAGE].bytes_list.value[0], "<i2")
                   .reshape(SHAPE) for e in raw]).astype(np.float32)
    labels = np.stack([np.frombuffer(e.features.feature[F.LABEL].bytes_list.value[0], "u1")
                       .reshape(SHAPE[:2]) for e in raw])
    if normalization == "window":
        np.testing.assert_allclose(image, (hu + 200.0) / 450.0, atol=1e-6)
    else:
        fg = hu[..., 1][labels > 0]
        np.testing.assert_allclose(image, (hu - fg.mean()) / fg.std(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(batch[F.MASK].numpy()[..., 0], (labels > 0).astype(np.float32))
    np.testing.assert_array_equal(batch[F.ORGAN].numpy()[:, 0],
                                  (labels > 0).any(axis=(1, 2)).astype(np.float32))
    assert output.transformed_feature_spec()[F.IMAGE].shape == list(SHAPE)


def test_zscore_without_foreground_fails_naming_the_cause(tmp_path):
    # A train split without any label > 0 has no foreground statistics: Transform must stop
    # with the cause, not write images scaled by 1 / 1e-6.
    raw = _raw_examples(foreground=False)
    assert not _labels(raw).any()
    with pytest.raises(Exception) as info:
        _analyze_and_transform(tmp_path, "zscore", raw=raw)
    assert "the analysed train split has no foreground (label > 0) voxels" in str(info.value), \
        str(info.value)[-3000:]
    assert "--normalization window" in str(info.value)


def _labels(raw):
    return np.stack([np.frombuffer(e.features.feature[F.LABEL].bytes_list.value[0], "u1")
                     .reshape(SHAPE[:2]) for e in raw])


def test_liver_tumor_mask_is_one_hot(tmp_path):
    raw, parsed, output = _analyze_and_transform(tmp_path, "window", classes="liver_tumor")
    labels = _labels(raw)
    assert (labels == 2).any() and (labels == 1).any(), "the examples must hold both classes"
    batch = output.transform_features_layer()(dict(parsed))
    mask = batch[F.MASK].numpy()
    assert mask.shape == (len(raw), *SHAPE[:2], 3) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, np.eye(3, dtype=np.float32)[labels])
    # organ stays "liver present" (liver or tumour), whatever the classes mode.
    np.testing.assert_array_equal(batch[F.ORGAN].numpy()[:, 0],
                                  (labels > 0).any(axis=(1, 2)).astype(np.float32))
    assert output.transformed_feature_spec()[F.MASK].shape == [*SHAPE[:2], 3]


def test_liver_mode_is_the_default_and_explicit(tmp_path):
    raw, parsed, output = _analyze_and_transform(tmp_path, "window", classes="liver")
    mask = output.transform_features_layer()(dict(parsed))[F.MASK].numpy()
    np.testing.assert_array_equal(mask[..., 0], (_labels(raw) > 0).astype(np.float32))
    assert output.transformed_feature_spec()[F.MASK].shape == [*SHAPE[:2], 1]


def test_unknown_classes_mode_is_rejected():
    schema = text_format.Parse(open(SCHEMA_PATH).read(), schema_pb2.Schema())
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    inputs = tf.io.parse_example([e.SerializeToString() for e in _raw_examples(2)], spec)
    with pytest.raises(ValueError, match="classes must be one of"):
        preprocessing_fn(inputs, {"image_shape": list(SHAPE), "window": list(WINDOW),
                                  "classes": "tumor"})
