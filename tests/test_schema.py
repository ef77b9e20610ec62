"""schema/schema.pbtxt and preprocessing/features.py describe the same raw example format."""
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from preprocessing import features as F
from schema import SCHEMA_PATH

KINDS = {schema_pb2.BYTES: "bytes", schema_pb2.INT: "int", schema_pb2.FLOAT: "float"}


def test_schema_matches_feature_table():
    schema = text_format.Parse(open(SCHEMA_PATH).read(), schema_pb2.Schema())
    described = {f.name: (KINDS[f.type], f.shape.dim[0].size) for f in schema.feature}
    assert described == F.RAW_FEATURES
    serving_absent = {f.name for f in schema.feature if "SERVING" in f.not_in_environment}
    assert F.IMAGE not in serving_absent and F.LABEL in serving_absent
