"""Segmenting a loaded CT case: the model sees the ExampleGen's own slices (preprocessing/slices.py,
serialized by preprocessing/examples.py) through its `serving_default` signature; probabilities
are resampled back to the canonical grid (linear, per class), then thresholded (one channel) or
argmaxed (three), post-processed in 3-D (inference/postprocess.py) when the InferenceConfig
says so, and the labels put back in the input file's own axis order. Shared by
predict.py (inference/runs.py) and the full-volume evaluation (evaluation/volume_eval.py).
"""
from __future__ import annotations

import dataclasses
import logging

import nibabel as nib
import numpy as np

from inference.cases import load_input
from inference.inference_config import MIRROR_AXES, InferenceConfig
from inference.model import ServeFn, check_model_dir, load_model
from inference.outputs import OutputRequest, check_seg_source, output_paths, write_case_seg
from inference.postprocess import postprocess
from inference.writers import write_mask
from preprocessing.examples import slice_example_bytes
from preprocessing.nifti import CanonicalCase
from preprocessing.slices import (SliceConfig, SliceRecord, model_grid_to_canonical,
                                  volume_to_model_input)

LOG = logging.getLogger(__name__)


def _serve_stacks(serve: ServeFn, case: CanonicalCase, stacks: np.ndarray,
                  batch_size: int) -> np.ndarray:
    """The model's probabilities [Z, H, W, C] of model-grid stacks [Z, H, W, K]."""
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_example_bytes(case.case_id, case.spacing,
                                     SliceRecord(image=np.ascontiguousarray(s), label=None,
                                                 slice_index=start + i, num_slices=len(stacks)))
                 for i, s in enumerate(stacks[start:start + batch_size])]
        probs.append(serve(batch))
    return np.concatenate(probs)


def predict_probabilities(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                          batch_size: int = 16, mirror: str = "none") -> np.ndarray:
    """Class probabilities per voxel of the canonical volume [X, Y, Z, C] (C = the model's
    output channels: 1 liver, or 3 background / liver / tumour). mirror: "none", or "flips"
    (the mean over the input and its mirror images along the in-plane axes: 4x the model
    time)."""
    if mirror not in MIRROR_AXES:
        raise ValueError(f"mirror must be one of {sorted(MIRROR_AXES)}, got {mirror!r}")
    # Labels play no part in inference (they would only be resampled for nothing).
    stacks = volume_to_model_input(dataclasses.replace(case, labels=None), config)  # [Z,H,W,K]
    passes = MIRROR_AXES[mirror]
    total = None
    for axes in passes:
        probs = _serve_stacks(serve, case, np.flip(stacks, axes) if axes else stacks,
                              batch_size)
        probs = np.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    if len(passes) > 1:
        total = total / len(passes)
    display = np.transpose(total, (1, 2, 0, 3))    # [H, W, Z, C]
    # The exact inverse of the ExampleGen's resampling (field of view or target spacing), one
    # channel at a time.
    return np.stack([model_grid_to_canonical(display[..., c], case, config, order=1)
                     for c in range(display.shape[-1])], axis=-1)


def probabilities_to_labels(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[..., C] probabilities -> uint8 labels: C == 1 thresholded (0/1), C > 1 argmax (0/1/2)."""
    from models.metrics import class_map  # imports Keras: not needed to reject bad input
    return class_map(probs, threshold).astype(np.uint8)


def to_source_orientation(canonical: np.ndarray, case) -> np.ndarray:
    """Canonical RAS+ array -> the input file's own axis order and directions."""
    transform = nib.orientations.ornt_transform(nib.io_orientation(case.affine),
                                                nib.io_orientation(case.source_affine))
    return nib.orientations.apply_orientation(canonical, transform)


def labels_of(probs: np.ndarray, case: CanonicalCase, options: InferenceConfig):
    """(uint8 labels in the canonical grid, the post-processing report) of the probabilities:
    thresholded or argmaxed, then post-processed in 3-D when options.postprocess."""
    labels = probabilities_to_labels(probs, options.threshold)
    return postprocess(labels, case.spacing, options.postprocess_settings())


def segment_case(serve: ServeFn, config: SliceConfig, case: CanonicalCase, output_path: str,
                 options: InferenceConfig = InferenceConfig(),
                 request: OutputRequest = OutputRequest()):
    """Writes the label map of a loaded case (load_input, which keeps the input file's affine
    and header) to `output_path`, and / or its DICOM SEG beside it (`request`); returns it (the
    input's grid) and the model's output channels."""
    nifti_path, seg_path = output_paths(output_path, request)
    if seg_path:
        check_seg_source(case, seg_path)   # before the model time
    probs = predict_probabilities(serve, case, config, options.batch_size, options.mirror)
    labels, report = labels_of(probs, case, options)
    if any(report.values()):
        LOG.info("%s: post-processing %s", case.case_id,
                 ", ".join(f"{k} {v}" for k, v in report.items() if v))
    mask = to_source_orientation(labels, case)
    assert mask.shape == case.source_shape
    if nifti_path:
        write_mask(mask, case, nifti_path)
    if seg_path:
        write_case_seg(mask, probs, case, seg_path, request)
    return mask, probs.shape[-1]


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   options: InferenceConfig = InferenceConfig()):
    """Writes the label map; returns it (the input's grid) and the model's output channels."""
    check_model_dir(model_dir)          # before reading a large volume
    case = load_input(input_path)
    serve, config = load_model(model_dir)
    return segment_case(serve, config, case, output_path, options)
