"""schema.pbtxt: the raw example format. SCHEMA_PATH locates it inside the installed package (the
wheel carries it as package data), wherever the process that reads it runs: this checkout, a
Kubeflow task's image or a Beam worker."""
import hashlib
import os

SCHEMA_FILE_NAME = "schema.pbtxt"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), SCHEMA_FILE_NAME)


def schema_sha256(path: str = SCHEMA_PATH) -> str:
    """Hex sha256 of the schema file: compiled into the pipeline, so a changed schema changes
    the cache key and an image holding another schema is caught when it runs."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
