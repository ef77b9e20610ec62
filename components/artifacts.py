"""This project's own artifact types.

On Kubeflow (v2) a custom type's name is both its schema title, which must read
`<namespace>.<Title>`, and the path the task entrypoint imports the class from. So the name is
"components.VolumeEvaluation" and the package `components` exports the class (its __init__)."""
from tfx.types import artifact

from schema.contract import VOLUME_EVALUATION_TYPE


class VolumeEvaluation(artifact.Artifact):
    """A folder with evaluation/volume_eval.py's metrics.json, metrics.csv and worst_slices.npz,
    and eval_report.html."""
    TYPE_NAME = VOLUME_EVALUATION_TYPE
