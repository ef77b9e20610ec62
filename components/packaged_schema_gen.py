"""PackagedSchemaGen: the curated schema (schema/schema.pbtxt) as a Schema artifact, copied from
the installed package by the process that runs the component.

TFX's ImportSchemaGen takes a file path fixed at compile time: compiled for Kubeflow, that is a
path on the compiling machine, absent from the task's image. This component looks the file up
where the package is installed when it runs (this checkout under the local runner, the wheel in
the image on Kubeflow), so every runner builds the same graph. The schema's sha256 is compiled in
as a parameter: a changed schema changes the cache key (a path alone does not), and an image
whose schema differs from the code that compiled the pipeline fails here, before any data step.

(No `from __future__ import annotations` here: the @component decorator reads the real types.)"""

from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils

from common import storage
from schema import SCHEMA_FILE_NAME, SCHEMA_PATH, schema_sha256


@component
def PackagedSchemaGen(schema: OutputArtifact[standard_artifacts.Schema],
                      expected_sha256: Parameter[str]) -> None:
    """Copies the packaged schema.pbtxt into the Schema artifact (the URI may be gs:// or s3://).
    `expected_sha256`: schema_sha256() where the pipeline was compiled."""
    found = schema_sha256(SCHEMA_PATH)
    if found != expected_sha256:
        raise RuntimeError(
            f"The installed schema {SCHEMA_PATH} (sha256 {found}) is not the one this pipeline "
            f"was compiled with (sha256 {expected_sha256}): rebuild the image from the same "
            "checkout, or compile again.")
    io_utils.SchemaReader().read(SCHEMA_PATH)   # fails here on a file that is not a Schema
    storage.copy(SCHEMA_PATH, storage.join(schema.uri, SCHEMA_FILE_NAME))
