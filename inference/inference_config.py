"""How a model's probabilities become a mask, in predict.py (its flags) and in the full-volume
evaluation (the pipeline's `inference.*` settings): a plain dataclass, no TensorFlow.

  threshold              liver probability cut of a one-channel model (three channels: argmax)
  batch_size             slices per model call
  mirror                 "none", or "flips": the mean of the probabilities over the input and its
                         mirror images along the two in-plane axes (inference/segmenter.py, 4x
                         the model time)
  postprocess            3-D post-processing of the labels (inference/postprocess.py: the
                         largest liver component, enclosed holes filled, tumour only inside the
                         liver and at least min_tumour_volume_mm3)
  min_tumour_volume_mm3  smaller tumour components become liver
  fill_holes             fill background enclosed by the liver in 3-D
  max_voxels             an input volume whose header declares more voxels is refused unread
  max_inflated_bytes     an input file larger than this inflated is refused, its read stopped
                         (preprocessing/read_limits.py: the same limits as the conversion's)

The defaults of `mirror` and `postprocess` follow the measurements in docs/measurements.md
(bench/postprocess_effect.py, `make run`'s liver model): each is on only where it raised mean
per-case Dice. Post-processing: +0.0000 on the synthetic eval split (nothing to remove), +0.0081
on the real LiTS crop (0.7001 -> 0.7082), so on. Mirroring: -0.146 and -0.026, so off: the
liver sits on one side, and a model trained without mirrored images (trainer/augment_config.py)
answers a mirrored abdomen badly.
"""
from __future__ import annotations

import argparse
import dataclasses

from inference.postprocess import PostprocessSettings
from preprocessing.read_limits import DEFAULT_LIMITS, ReadLimits, add_read_limit_flags

# Test-time mirroring: for each mode, the in-plane axes of a [Z, H, W, K] stack to flip, one
# subset per model pass (inference/segmenter.py mirrors each answer back and averages them).
MIRROR_AXES = {"none": ((),), "flips": ((), (1,), (2,), (1, 2))}
MIRRORS = tuple(MIRROR_AXES)


@dataclasses.dataclass
class InferenceConfig:
    threshold: float = 0.5        # liver probability cut of a one-channel model
    batch_size: int = 16          # slices per model call
    mirror: str = "none"          # test-time mirroring: "flips" averages 4 mirror images
    postprocess: bool = True      # 3-D post-processing of the labels (inference/postprocess.py)
    min_tumour_volume_mm3: float = PostprocessSettings.min_tumour_volume_mm3   # smaller: liver
    fill_holes: bool = PostprocessSettings.fill_holes   # fill holes enclosed by liver in 3-D
    max_voxels: int = DEFAULT_LIMITS.max_voxels   # per input volume, from its header
    max_inflated_bytes: int = DEFAULT_LIMITS.max_inflated_bytes   # per input file, inflated

    def __post_init__(self):
        if self.mirror not in MIRRORS:
            raise ValueError(f"mirror must be one of {MIRRORS}, got {self.mirror!r}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        self.postprocess_settings()   # its own checks
        self.read_limits()

    def read_limits(self) -> ReadLimits:
        return ReadLimits(int(self.max_voxels), int(self.max_inflated_bytes))

    def postprocess_settings(self, enabled: bool = None) -> PostprocessSettings:
        """The post-processing settings (`enabled` overrides `postprocess`)."""
        return PostprocessSettings(
            enabled=self.postprocess if enabled is None else enabled,
            min_tumour_volume_mm3=float(self.min_tumour_volume_mm3), fill_holes=self.fill_holes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InferenceConfig":
        """From to_dict's output, also after JSON (every number may be a float)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown inference settings: {sorted(unknown)}")
        for name in ("batch_size", "max_voxels", "max_inflated_bytes"):
            if name in d:
                d[name] = int(d[name])
        return cls(**d)


def add_inference_flags(p: argparse.ArgumentParser, postprocess_help: str) -> None:
    """The flags of an InferenceConfig (predict.py, evaluation/volume_eval.py)."""
    defaults = InferenceConfig()
    p.add_argument("--threshold", type=float, default=defaults.threshold,
                   help="liver probability cut of a one-channel model (a three-class model's "
                        "labels are its argmax)")
    p.add_argument("--batch_size", type=int, default=defaults.batch_size)
    p.add_argument("--mirror", choices=MIRRORS, default=defaults.mirror,
                   help="test-time mirroring: 'flips' averages the input and its in-plane "
                        f"mirror images (4x the model time; default {defaults.mirror})")
    p.add_argument("--postprocess", action=argparse.BooleanOptionalAction,
                   default=defaults.postprocess,
                   help=f"{postprocess_help} (default: {'on' if defaults.postprocess else 'off'})")
    p.add_argument("--min_tumour_volume_mm3", type=float,
                   default=defaults.min_tumour_volume_mm3,
                   help="post-processing: smaller tumour components become liver")
    add_read_limit_flags(p, defaults.read_limits())


def inference_options(args: argparse.Namespace) -> InferenceConfig:
    """The InferenceConfig of add_inference_flags' flags; ValueError on a bad value."""
    return InferenceConfig(threshold=args.threshold, batch_size=args.batch_size,
                           mirror=args.mirror, postprocess=args.postprocess,
                           min_tumour_volume_mm3=args.min_tumour_volume_mm3,
                           max_voxels=args.max_voxels,
                           max_inflated_bytes=args.max_inflated_bytes)
