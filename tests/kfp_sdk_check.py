"""Checks a compiled pipeline file with the kfp SDK itself; runs in the SDK's own venv
(.venv-kfp: kfp 2.17.3 with protobuf 6, which .venv cannot hold), called by
tests/test_kfp_sdk.py:

    .venv-kfp/bin/python tests/kfp_sdk_check.py PIPELINE.yaml [CALLS.json]

1. What KFP's API server does on upload (kubeflow/pipelines 2.17.0,
   backend/src/apiserver/template/v2_template.go, NewV2SpecTemplate, and template.go,
   isPipelineSpec): every YAML document that parses strictly (protojson: unknown fields refused)
   as a PipelineSpec with a name and a root is the spec; exactly one; schemaVersion "2.1.0".
   Here: json_format with kfp-pipeline-spec 2.17.3, ignore_unknown_fields=False.
2. The SDK's loaders: kfp.components.load_component_from_file, and what
   Client.create_run_from_pipeline_package does with the file before sending it
   (_extract_pipeline_yaml, then _override_caching_options for enable_caching).
3. With CALLS.json ([{"call": "Client.upload_pipeline", "args": 1, "kwargs": [...]}, ...]),
   each call binds to that kfp method's signature (the docs' upload-and-run snippet).

Prints one JSON line (what was checked); exits 1 with the reason on the first failure.
"""
import inspect
import json
import sys

import yaml


def fail(message):
    print(json.dumps({"ok": False, "error": message}))
    sys.exit(1)


def api_server_spec(path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    specs = []
    with open(path) as f:
        for document in yaml.safe_load_all(f):
            if not document:
                continue
            spec = pipeline_spec_pb2.PipelineSpec()
            try:
                json_format.ParseDict(document, spec, ignore_unknown_fields=False)
            except json_format.ParseError as error:
                fail(f"not a pipeline spec the API server parses: {error}")
            if spec.pipeline_info.name and spec.HasField("root"):
                specs.append(spec)
    if len(specs) != 1:
        fail(f"{len(specs)} pipeline specs in {path}: the API server wants exactly one")
    if specs[0].schema_version != "2.1.0":
        fail(f"KFP only supports schema version 2.1.0, but the pipeline spec has version "
             f"{specs[0].schema_version}")
    return specs[0]


def sdk_loads(path):
    from kfp import components
    from kfp.client import client as kfp_client
    component = components.load_component_from_file(path)
    document = kfp_client._extract_pipeline_yaml(path)
    kfp_client._override_caching_options(document.pipeline_spec, False)
    return component.name, sorted(document.pipeline_spec.root.dag.tasks)


def check_calls(calls):
    """Binds each call ({"call": "Client.METHOD", "args": N, "kwargs": [names]}; the
    constructor is Client.__init__) to the method's signature, self first."""
    import kfp
    checked = []
    for call in calls:
        owner, method = call["call"].split(".")
        signature = inspect.signature(getattr(getattr(kfp, owner), method))
        try:
            signature.bind("self", *["x"] * call.get("args", 0),
                           **{k: None for k in call["kwargs"]})
        except TypeError as error:
            fail(f"{call['call']}(...{', '.join(call['kwargs'])}): {error}")
        checked.append(call["call"])
    return checked


def main(argv):
    spec = api_server_spec(argv[0])
    name, tasks = sdk_loads(argv[0])
    calls = check_calls(json.loads(open(argv[1]).read())) if len(argv) > 1 else []
    import kfp
    print(json.dumps({"ok": True, "kfp": kfp.__version__, "schema_version": spec.schema_version,
                      "pipeline": spec.pipeline_info.name, "component": name, "tasks": tasks,
                      "calls": calls}))


if __name__ == "__main__":
    main(sys.argv[1:])
