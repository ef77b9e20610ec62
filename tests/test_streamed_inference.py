"""Inference streams over the volume (inference/segmenter.py iter_probabilities): a few slices
at a time go through the model and back to the scan's grid, so the float32 probabilities of the
whole volume are never held. Chunked answers equal the answers of the whole volume at once
(bytes the model sees included: each slice keeps its index in the volume), for the model grid
resized or resampled to a spacing, with and without mirroring; and the memory held does not
grow with the volume's probabilities."""
from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

from inference import segmenter
from inference.cases import load_input
from inference.inference_config import InferenceConfig
from preprocessing.slices import SliceConfig
from preprocessing.synthetic_ct import write_dataset

CONFIGS = {"resized": SliceConfig(size=(32, 32), context=1),
           "spacing": SliceConfig(size=(24, 40), context=2, target_spacing=1.3)}


def answering(size, channels: int = 3):
    """A stand-in model whose answer is a fixed function of each example's bytes (image, slice
    index and count): any difference in what a slice is sent as changes its answer."""
    def serve(batch):
        out = []
        for example in batch:
            rng = np.random.default_rng(zlib.crc32(example))
            logits = rng.normal(size=(*size, channels)).astype(np.float32)
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            out.append(e / e.sum(axis=-1, keepdims=True))
        return np.stack(out)
    return serve


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("streamed"))
    write_dataset(root, num_cases=1, in_plane=48, slices_range=(21, 21), progress=False)
    return load_input(f"{root}/volume-0.nii.gz")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("mirror", ["none", "flips"])
def test_chunks_equal_the_whole_volume(case, name, mirror):
    config = CONFIGS[name]
    serve = answering(config.size)
    whole = np.concatenate([p for _, _, p in segmenter.iter_probabilities(
        serve, case, config, batch_size=4, mirror=mirror, chunk_slices=10 ** 6)], axis=2)
    spans, parts = [], []
    for z0, z1, p in segmenter.iter_probabilities(serve, case, config, batch_size=2,
                                                  mirror=mirror, chunk_slices=5):
        spans.append((z0, z1))
        parts.append(p)
    assert spans[0] == (0, 4) and spans[-1][1] == whole.shape[2] and len(spans) == 6
    np.testing.assert_allclose(np.concatenate(parts, axis=2), whole, atol=1e-6)

    options = InferenceConfig(batch_size=2, mirror=mirror)
    labels, channels, kept = segmenter.predict_labels(serve, case, config, options,
                                                      keep_probabilities=True)
    assert channels == 3 and labels.dtype == np.uint8 and kept.dtype == np.uint8
    np.testing.assert_array_equal(labels, segmenter.probabilities_to_labels(whole))
    assert np.abs(kept / 255.0 - whole).max() <= 0.5 / 255 + 1e-6


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_hold_the_volumes_probabilities(tmp_path):
    """A 160-slice volume, labels made in chunks of 32 slices and in one chunk of all 160 (as
    before streaming): the whole float32 probabilities (48x48x160x3x4 = 4.4 MB, and their copy
    on the scan's grid) are the difference between the two peaks (tracemalloc counts numpy's
    buffers); what both hold (the volume on the model grid) is the same."""
    write_dataset(str(tmp_path), num_cases=1, in_plane=48, slices_range=(160, 160),
                  progress=False)
    big = load_input(str(tmp_path / "volume-0.nii.gz"))
    config = SliceConfig(size=(48, 48), context=1)
    serve, options = answering(config.size), InferenceConfig(batch_size=8)
    whole_bytes = 48 * 48 * 160 * 3 * 4
    chunked = _peak(lambda: segmenter.predict_labels(serve, big, config, options))
    at_once = _peak(lambda: segmenter.predict_labels(serve, big, config, options,
                                                     chunk_slices=160))
    assert at_once - chunked > 0.8 * whole_bytes, (chunked, at_once, whole_bytes)
