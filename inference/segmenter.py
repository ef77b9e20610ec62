"""Segmenting a loaded CT case: the model sees the ExampleGen's own slices (preprocessing/slices.py,
serialized by preprocessing/examples.py) through its `serving_default` signature; probabilities
are resampled back to the canonical grid (linear, per class), then thresholded (one channel) or
argmaxed (three), and the labels put back in the input file's own axis order. Shared by
predict.py (inference/runs.py) and the full-volume evaluation (evaluation/volume_eval.py).
"""
from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np

from inference.cases import load_input
from inference.model import ServeFn, check_model_dir, load_model
from inference.writers import write_mask
from preprocessing.examples import slice_example_bytes
from preprocessing.nifti import CanonicalCase
from preprocessing.slices import (SliceConfig, SliceRecord, model_grid_to_canonical,
                                  volume_to_model_input)


def predict_probabilities(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                          batch_size: int = 16) -> np.ndarray:
    """Class probabilities per voxel of the canonical volume [X, Y, Z, C] (C = the model's
    output channels: 1 liver, or 3 background / liver / tumour)."""
    # Labels play no part in inference (they would only be resampled for nothing).
    stacks = volume_to_model_input(dataclasses.replace(case, labels=None), config)  # [Z,H,W,K]
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_example_bytes(case.case_id, case.spacing,
                                     SliceRecord(image=s, label=None, slice_index=start + i,
                                                 num_slices=len(stacks)))
                 for i, s in enumerate(stacks[start:start + batch_size])]
        probs.append(serve(batch))
    display = np.transpose(np.concatenate(probs), (1, 2, 0, 3))    # [H, W, Z, C]
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


def segment_case(serve: ServeFn, config: SliceConfig, case: CanonicalCase, output_path: str,
                 threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map of a loaded case (load_input, which keeps the input file's affine
    and header) to `output_path`; returns it (the input's grid) and the model's output
    channels."""
    probs = predict_probabilities(serve, case, config, batch_size)
    mask = to_source_orientation(probabilities_to_labels(probs, threshold), case)
    assert mask.shape == case.source_shape
    write_mask(mask, case, output_path)
    return mask, probs.shape[-1]


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   threshold: float = 0.5, batch_size: int = 16):
    """Writes the label map; returns it (the input's grid) and the model's output channels."""
    check_model_dir(model_dir)          # before reading a large volume
    case = load_input(input_path)
    serve, config = load_model(model_dir)
    return segment_case(serve, config, case, output_path, threshold, batch_size)
