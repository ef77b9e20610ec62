"""Loading an exported model for inference: its `serving_default` signature (which holds the
Transform graph) and the SliceConfig it was trained with. Cheap checks come before any
TensorFlow import, so a mistyped --model fails in a second. Every path may be a URI."""
from __future__ import annotations

import json
from typing import Callable, List, Tuple

import numpy as np

from common import storage
from preprocessing.nifti import CaseError
from preprocessing.slices import SliceConfig
from schema.contract import MODEL_SLICE_CONFIG_FILE

# Serialized tf.Examples (ExampleGen format) -> float32 probabilities [B, H, W, C].
ServeFn = Callable[[List[bytes]], np.ndarray]


def check_model_dir(model_dir: str) -> None:
    """Cheap checks of --model, before any TensorFlow import for a local path (a typo fails in
    a second)."""
    try:
        if not storage.isdir(model_dir):
            raise CaseError(model_dir, "model directory not found")
        found = any(storage.isfile(storage.join(model_dir, name))
                    for name in ("saved_model.pb", "saved_model.pbtxt"))
    except OSError as e:
        raise CaseError(model_dir, f"cannot read the model directory ({e})") from e
    if not found:
        raise CaseError(model_dir, "not a SavedModel directory (no saved_model.pb)")


def load_slice_config(model_dir: str) -> SliceConfig:
    path = storage.join(model_dir, MODEL_SLICE_CONFIG_FILE)
    try:
        return SliceConfig.from_dict(json.loads(storage.read_text(path)))
    except FileNotFoundError as e:
        raise CaseError(path, "slice config not found (not a model exported by this "
                              "pipeline's Trainer)") from e
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CaseError(path, f"invalid slice config ({type(e).__name__}: {e})") from e


def serving_function(model) -> ServeFn:
    """The SavedModel's `serving_default` signature as a ServeFn."""
    import tensorflow as tf
    signature = model.signatures["serving_default"]

    def serve(batch: List[bytes], _model=model) -> np.ndarray:   # _model: keeps it alive
        return np.asarray(signature(examples=tf.constant(batch))["probabilities"])
    return serve


def load_model(model_dir: str) -> Tuple[ServeFn, SliceConfig]:
    """(the model's serving function, the SliceConfig it was trained with); CaseError naming the
    directory when it is not a usable exported model."""
    check_model_dir(model_dir)
    config = load_slice_config(model_dir)
    import tensorflow as tf
    try:
        storage.ensure_filesystem(model_dir)
        model = tf.saved_model.load(model_dir)
    except Exception as e:   # TF raises several types for a broken SavedModel
        raise CaseError(model_dir, f"cannot load the SavedModel ({type(e).__name__}: {e})") from e
    if "serving_default" not in model.signatures:
        raise CaseError(model_dir, "the SavedModel has no serving_default signature")
    return serving_function(model), config
