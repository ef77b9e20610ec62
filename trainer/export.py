"""Export of the trained model as a SavedModel with three signatures:

  serving_default      serialized raw examples (ExampleGen format) -> Transform graph -> model
  serving_transformed  serialized transformed examples -> model (the Evaluator uses this, so it
                       does not decode images twice)
  segment_slices       preprocessed float slices [B, H, W, K] -> model (volume inference)

Each returns {"probabilities": float32 [B, H, W, C]} from the final (gated) mask output only,
C being the mask channels of the Transform (TransformConfig.classes):
  C = 1 ("liver")        sigmoid probability of liver (incl. tumour); threshold it (0.5)
  C = 3 ("liver_tumor")  softmax over background / liver / tumour, summing to 1 per pixel;
                         take the argmax (liver incl. tumour = argmax >= 1, tumour = argmax == 2)
"""
from __future__ import annotations

import json
from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from common import storage
from preprocessing import features as F
from schema.contract import (MODEL_SETTINGS_FILE, MODEL_SLICE_CONFIG_FILE, PROBABILITIES,
                             SIGNATURE_RAW, SIGNATURE_SLICES, SIGNATURE_TRANSFORMED)


class SegmentationServingModule(tf.Module):
    def __init__(self, model, tf_transform_output: tft.TFTransformOutput):
        super().__init__()
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        # Serving needs the image only: the label and its flags are absent at serving time.
        self._raw_spec = {F.IMAGE: tf_transform_output.raw_feature_spec()[F.IMAGE]}
        self._transformed_spec = {
            F.IMAGE: tf_transform_output.transformed_feature_spec()[F.IMAGE]}
        image_shape = self._transformed_spec[F.IMAGE].shape
        self.segment_slices = tf.function(
            self._segment_slices,
            input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="slices")])

    def _predict(self, images: tf.Tensor):
        outputs = self.model(images, training=False)
        return {PROBABILITIES: tf.cast(outputs["mask"], tf.float32)}

    def _segment_slices(self, slices):
        return self._predict(slices)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_raw(self, serialized):
        raw = tf.io.parse_example(serialized, self._raw_spec)
        transformed = self.tft_layer(raw)
        return self._predict(transformed[F.IMAGE])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_transformed(self, serialized):
        feats = tf.io.parse_example(serialized, self._transformed_spec)
        return self._predict(feats[F.IMAGE])


def export_serving_model(model, tf_transform_output: tft.TFTransformOutput,
                         export_dir: str, slice_config: dict,
                         settings_yaml: Optional[str] = None) -> str:
    """The SavedModel with its signatures, the slice config predict.py reads and (given) the
    settings that produced the model (assets.extra/settings.yaml)."""
    module = SegmentationServingModule(model, tf_transform_output)
    signatures = {
        SIGNATURE_RAW: module.serve_raw.get_concrete_function(),
        SIGNATURE_TRANSFORMED: module.serve_transformed.get_concrete_function(),
        SIGNATURE_SLICES: module.segment_slices.get_concrete_function(),
    }
    # export_dir may be a URI (gs://...): the SavedModel is written through TF's filesystems.
    storage.ensure_filesystem(export_dir)
    tf.saved_model.save(module, export_dir, signatures=signatures)
    write_slice_config(export_dir, slice_config)
    if settings_yaml:
        storage.write_text(storage.join(export_dir, MODEL_SETTINGS_FILE), settings_yaml)
    return export_dir


def write_slice_config(export_dir: str, slice_config: dict) -> None:
    """assets.extra/slice_config.json beside the SavedModel: how predict.py slices a volume."""
    storage.write_text(storage.join(export_dir, MODEL_SLICE_CONFIG_FILE),
                       json.dumps(slice_config, indent=2))
