"""What the NIfTI -> examples conversion is told: one typed dataclass, each default written
once. The ExampleGen (through its custom_config, as `to_dict()`), the converter CLI and
pipeline/configs.py (which composes it into PipelineConfig) all use it."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

from preprocessing.read_limits import DEFAULT_LIMITS, ReadLimits
from preprocessing.volume_slots import DEFAULT_VOLUMES_IN_FLIGHT
from preprocessing.slices import SliceConfig

# zlib level of the output gzip. Level 1 is ~5x faster than TFX's level 6 on windowed CT slices
# and its files ~3% larger (bench/examplegen_throughput.py measures both).
DEFAULT_COMPRESSION_LEVEL = 1
DEFAULT_COMPRESS_THREADS = 2
# Beam's in-process runner, for every Beam pipeline built without a --runner (the ExampleGen's
# default args in pipeline/configs.py, the converter CLI): Beam 2.74's DirectRunner would first
# try Prism, which downloads a binary at run time (and fails offline).
LOCAL_BEAM_RUNNER = "--runner=FnApiRunner"
# Beam's Dask runner, named by its class path: Beam resolves short names (--runner=DataflowRunner)
# only for the runners it lists in StandardOptions.ALL_KNOWN_RUNNERS, and this one is not listed.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# One case per Dask partition (one task each, spread over the workers): the DaskRunner puts up to
# 128 elements of a Create in one partition and runs Reshuffle as a no-op, so without this every
# case would be converted by one task on one worker, holding all their examples in memory.
DASK_ONE_CASE_PER_TASK = "--dask_partition_size=1"


def beam_flag_values(beam_args: Sequence[str], name: str) -> List[str]:
    """Values of `name` in Beam args written `--name=value` or `--name value`, in order."""
    values = []
    for i, arg in enumerate(beam_args):
        if arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == name and i + 1 < len(beam_args):
            values.append(beam_args[i + 1])
    return values


def beam_runner(beam_args: Sequence[str]) -> Optional[str]:
    """The runner's short name ("dask", "dataflow", "flink", "fnapi", ...) from the last
    `--runner`, as Beam resolves it (case-insensitive, an optional "Runner" suffix, a dotted class
    path); None without one."""
    runners = beam_flag_values(beam_args, "--runner")
    if not runners:
        return None
    name = runners[-1].rsplit(".", 1)[-1].lower()
    return name[:-len("runner")] if name.endswith("runner") else name


def with_local_runner(beam_args: Sequence[str]) -> List[str]:
    """The args, with Beam's in-process runner first when they name no runner (args without one,
    e.g. only --direct_running_mode=multi_processing, keep the runner that downloads nothing)."""
    args = list(beam_args)
    return args if beam_runner(args) is not None else [LOCAL_BEAM_RUNNER] + args


def conversion_beam_args(beam_args: List[str]) -> List[str]:
    """The conversion's Beam args: on the DaskRunner one case per task unless the args partition
    otherwise (--dask_partition_size / --dask_npartitions); other runners' args unchanged."""
    args = list(beam_args)
    if beam_runner(args) == "dask" and not any(
            a.startswith(("--dask_partition_size", "--dask_npartitions")) for a in args):
        args.append(DASK_ONE_CASE_PER_TASK)
    return args


@dataclasses.dataclass
class ConversionSettings:
    slices: SliceConfig = dataclasses.field(default_factory=SliceConfig)
    eval_fraction: float = 0.25       # share of the cases (patients) in the eval split
    split_seed: int = 0               # which cases go to the eval split
    eval_cases: Optional[List[str]] = None   # explicit eval case ids (overrides eval_fraction)
    max_bad_fraction: float = 0.1     # more quarantined cases than this fails the run
    manifest: Optional[str] = None    # CSV (image, label[, case_id]) instead of LiTS naming
    # Cases without a label (manifest rows, LiTS volumes): inference-only cases, not errors.
    allow_unlabeled: bool = False
    compression_level: int = DEFAULT_COMPRESSION_LEVEL   # zlib level of the example shards
    compress_threads: int = DEFAULT_COMPRESS_THREADS     # threads compressing the shards
    prefetch: bool = True             # read the next case while converting one
    # Volumes one worker process holds at once, whatever its threads (volume_slots.py); 1 turns
    # the read-ahead off in effect.
    max_volumes_in_flight: int = DEFAULT_VOLUMES_IN_FLIGHT
    max_voxels: int = DEFAULT_LIMITS.max_voxels   # more, as declared: quarantined, unread
    max_inflated_bytes: int = DEFAULT_LIMITS.max_inflated_bytes   # per file, inflated: same

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able: the ExampleGen's custom_config."""
        d = dataclasses.asdict(self)
        d["slice"] = self.slices.to_dict()
        del d["slices"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ConversionSettings":
        """Inverse of to_dict; a missing key takes its default, an unknown one is an error."""
        d = dict(d)
        slices = SliceConfig.from_dict(d.pop("slice")) if "slice" in d else SliceConfig()
        known = {f.name for f in dataclasses.fields(cls)} - {"slices"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown conversion settings {sorted(unknown)}; known: "
                             f"{sorted(known | {'slice'})}")
        if d.get("eval_cases") is not None:
            d["eval_cases"] = list(d["eval_cases"])
        # A protobuf Struct (the custom_config) brings every number back as a float.
        for name in ("split_seed", "compression_level", "compress_threads", "max_voxels",
                     "max_inflated_bytes", "max_volumes_in_flight"):
            if name in d:
                d[name] = int(d[name])
        return cls(slices=slices, **d)

    def read_limits(self) -> ReadLimits:
        return ReadLimits(self.max_voxels, self.max_inflated_bytes)

    def manifest_path(self, input_base: Optional[str]) -> Optional[str]:
        """The manifest, resolved against `input_base` when relative; None without one."""
        if not self.manifest:
            return None
        if os.path.isabs(self.manifest) or "://" in self.manifest or not input_base:
            return self.manifest
        return os.path.join(input_base, self.manifest)
