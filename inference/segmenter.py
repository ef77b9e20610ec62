"""Segmenting a loaded CT case: the model sees the ExampleGen's own slices (preprocessing/slices.py,
serialized by preprocessing/examples.py) through its `serving_default` signature; probabilities
are resampled back to the canonical grid (linear, per class), then thresholded (one channel) or
argmaxed (three), post-processed in 3-D (inference/postprocess.py) when the InferenceConfig
says so, and the labels put back in the input file's own axis order. Shared by
predict.py (inference/runs.py) and the full-volume evaluation (evaluation/volume_eval.py).

The volume is streamed through the model CHUNK_SLICES slices at a time (iter_probabilities):
every step above up to the argmax works slice by slice, so only one chunk's probabilities are
float32 and the whole volume is kept as uint8 labels (plus uint8 probabilities for a fractional
DICOM SEG); the 3-D post-processing then works on those labels.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Optional, Tuple

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
                                  prepare_slices, stack_context_zhw)

LOG = logging.getLogger(__name__)


# Slices per chunk of the volume: the model-grid stacks and the probabilities of one chunk are
# all that is held in float32 (a 512x512 chunk of 32 slices, 3 classes: 100 MB), never the
# whole volume's.
CHUNK_SLICES = 32


def _serve_stacks(serve: ServeFn, case: CanonicalCase, stacks: np.ndarray, batch_size: int,
                  first_index: int, num_slices: int) -> np.ndarray:
    """The model's probabilities [n, H, W, C] of model-grid stacks [n, H, W, K], the slices
    first_index.. of a volume of num_slices."""
    probs = []
    for start in range(0, len(stacks), batch_size):
        batch = [slice_example_bytes(case.case_id, case.spacing,
                                     SliceRecord(image=np.ascontiguousarray(s), label=None,
                                                 slice_index=first_index + start + i,
                                                 num_slices=num_slices))
                 for i, s in enumerate(stacks[start:start + batch_size])]
        probs.append(serve(batch))
    return np.concatenate(probs)


def iter_probabilities(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                       batch_size: int = 16, mirror: str = "none",
                       chunk_slices: int = CHUNK_SLICES
                       ) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(z0, z1, class probabilities of the canonical slices z0..z1-1 [X, Y, z1 - z0, C]), chunk
    by chunk (C = the model's output channels: 1 liver, or 3 background / liver / tumour).
    mirror: "none", or "flips" (the mean over the input and its mirror images along the
    in-plane axes: 4x the model time). Held at once: the volume on the model grid (int16) and
    one chunk's stacks and probabilities."""
    if mirror not in MIRROR_AXES:
        raise ValueError(f"mirror must be one of {sorted(MIRROR_AXES)}, got {mirror!r}")
    # Labels play no part in inference (they would only be resampled for nothing).
    prepared = prepare_slices(dataclasses.replace(case, labels=None), config)   # [Z, H, W]
    num_slices, passes = prepared.num_slices, MIRROR_AXES[mirror]
    step = max(1, int(chunk_slices) // batch_size) * batch_size   # whole model batches
    stacks = None
    for z0 in range(0, num_slices, step):
        z1 = min(num_slices, z0 + step)
        if stacks is None or len(stacks) != z1 - z0:
            stacks = np.empty((z1 - z0,) + prepared.image.shape[1:] + (config.channels,),
                              np.int16)
        for i, z in enumerate(range(z0, z1)):
            stack_context_zhw(prepared.image, z, config.context, out=stacks[i])
        total = None
        for axes in passes:   # in-plane axes of [n, H, W, K]: a chunk mirrors as the volume
            probs = _serve_stacks(serve, case, np.flip(stacks, axes) if axes else stacks,
                                  batch_size, z0, num_slices)
            probs = np.flip(probs, axes) if axes else probs
            total = probs if total is None else total + probs
        if len(passes) > 1:
            total = total / len(passes)
        display = np.transpose(total, (1, 2, 0, 3))    # [H, W, n, C]
        # The exact inverse of the ExampleGen's resampling (field of view or target spacing),
        # one channel at a time; it works slice by slice, so chunks join seamlessly.
        yield z0, z1, np.stack([model_grid_to_canonical(display[..., c], case, config, order=1)
                                for c in range(display.shape[-1])], axis=-1)


def predict_probabilities(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                          batch_size: int = 16, mirror: str = "none") -> np.ndarray:
    """Class probabilities per voxel of the whole canonical volume [X, Y, Z, C], float32 (4 x C
    bytes a voxel: predict_labels keeps only uint8 labels)."""
    chunks = [p for _, _, p in iter_probabilities(serve, case, config, batch_size, mirror)]
    return np.concatenate(chunks, axis=2)


def predict_labels(serve: ServeFn, case: CanonicalCase, config: SliceConfig,
                   options: InferenceConfig, keep_probabilities: bool = False,
                   chunk_slices: int = CHUNK_SLICES
                   ) -> Tuple[np.ndarray, int, Optional[np.ndarray]]:
    """(uint8 labels of the canonical volume [X, Y, Z], thresholded or argmaxed chunk by
    chunk; the model's output channels; with keep_probabilities, the probabilities as uint8
    [X, Y, Z, C] in 1/255 steps (a fractional DICOM SEG's own resolution), else None)."""
    labels = kept = None
    channels = 0
    for z0, z1, probs in iter_probabilities(serve, case, config, options.batch_size,
                                            options.mirror, chunk_slices):
        if labels is None:
            channels = probs.shape[-1]
            labels = np.empty(probs.shape[:2] + (_num_slices(case),), np.uint8)
            if keep_probabilities:
                kept = np.empty(labels.shape + (channels,), np.uint8)
        labels[:, :, z0:z1] = probabilities_to_labels(probs, options.threshold)
        if kept is not None:
            kept[:, :, z0:z1] = np.rint(np.clip(probs, 0.0, 1.0) * 255.0)
    return labels, channels, kept


def _num_slices(case: CanonicalCase) -> int:
    return (case.hu if case.hu is not None else case.stored).shape[2]


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
                 options: InferenceConfig = InferenceConfig(),
                 request: OutputRequest = OutputRequest()):
    """Writes the label map of a loaded case (load_input, which keeps the input file's affine
    and header) to `output_path`, and / or its DICOM SEG beside it (`request`); returns it (the
    input's grid) and the model's output channels."""
    nifti_path, seg_path = output_paths(output_path, request)
    if seg_path:
        check_seg_source(case, seg_path)   # before the model time
    fractional = bool(seg_path) and request.seg_type == "fractional"
    labels, channels, kept = predict_labels(serve, case, config, options,
                                            keep_probabilities=fractional)
    labels, report = postprocess(labels, case.spacing, options.postprocess_settings())
    if any(report.values()):
        LOG.info("%s: post-processing %s", case.case_id,
                 ", ".join(f"{k} {v}" for k, v in report.items() if v))
    mask = to_source_orientation(labels, case)
    assert mask.shape == case.source_shape
    if nifti_path:
        write_mask(mask, case, nifti_path)
    if seg_path:
        write_case_seg(mask, channels, case, seg_path, request,
                       None if kept is None else kept.astype(np.float32) / 255.0)
    return mask, channels


def segment_volume(model_dir: str, input_path: str, output_path: str,
                   options: InferenceConfig = InferenceConfig()):
    """Writes the label map; returns it (the input's grid) and the model's output channels."""
    check_model_dir(model_dir)          # before reading a large volume
    case = load_input(input_path)
    serve, config = load_model(model_dir)
    return segment_case(serve, config, case, output_path, options)
