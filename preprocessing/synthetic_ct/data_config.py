"""Which built-in synthetic CT set a pipeline run uses (generated on first use when no data root
is given); the generator's own parameters are the arguments of writer.write_dataset."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SyntheticDataConfig:
    num_cases: int = 12
    size: int = 128            # in-plane voxels
    seed: int = 0
    min_slices: int = 24
    max_slices: int = 56

    @property
    def folder_name(self) -> str:
        return f"synthetic_ct_n{self.num_cases}_s{self.size}_seed{self.seed}"
