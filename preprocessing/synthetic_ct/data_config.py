"""Which built-in synthetic CT set a pipeline run uses (generated on first use when no data root
is given); the generator's own parameters are the arguments of writer.write_dataset."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SyntheticDataConfig:
    num_cases: int = 12        # volumes in the set (ignored with a data root)
    size: int = 128            # in-plane voxels
    seed: int = 0              # the set's random seed: the same seed, the same volumes
    min_slices: int = 24       # slices per volume, drawn in [min_slices, max_slices]
    max_slices: int = 56       # see min_slices

    @property
    def folder_name(self) -> str:
        return f"synthetic_ct_n{self.num_cases}_s{self.size}_seed{self.seed}"
