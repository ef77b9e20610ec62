"""TFX components of this pipeline. The artifact types are exported here because Kubeflow's task
entrypoint imports a custom type by its name, "components.<Type>" (components/artifacts.py)."""
from components.artifacts import VolumeEvaluation

__all__ = ["VolumeEvaluation"]
