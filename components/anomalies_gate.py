"""Data checks that stop the pipeline: StatisticsGen + ExampleValidator against the curated
schema, then AnomaliesGate, which fails the run (before Transform and training) with a message
naming each anomaly. ExampleValidator alone only records anomalies and lets the run go on.

(No `from __future__ import annotations` here: the @component decorator reads the real types.)"""

from typing import List, Tuple

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from common import storage

ANOMALIES_FILE = "SchemaDiff.pb"


def _reasons(info) -> str:
    return ("; ".join(r.description or r.short_description for r in info.reason)
            or info.description)


def describe_anomalies(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """One line per anomaly: split, feature, what is wrong. The artifact may be a URI (gs://)."""
    problems = []
    for split in split_names:
        anomalies = anomalies_pb2.Anomalies.FromString(storage.read_bytes(
            storage.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            problems.append(f"[{split}] feature '{feature}': {_reasons(info)}")
        if anomalies.HasField("dataset_anomaly_info"):
            problems.append(f"[{split}] data set: {_reasons(anomalies.dataset_anomaly_info)}")
    return problems


@component
def AnomaliesGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Fails when ExampleValidator found any anomaly, so bad data never reaches training."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    problems = describe_anomalies(anomalies.uri, splits)
    if problems:
        raise RuntimeError("Data validation against schema/schema.pbtxt failed; the pipeline "
                           "stops before Transform and training:\n  " + "\n  ".join(problems))


def validation_components(examples, schema) -> Tuple:
    """(StatisticsGen, ExampleValidator, AnomaliesGate) wired to examples and schema channels."""
    statistics_gen = tfx.components.StatisticsGen(examples=examples, schema=schema)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema)
    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    return statistics_gen, example_validator, gate
