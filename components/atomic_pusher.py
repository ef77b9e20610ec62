"""The Pusher's executor, shipping a model version whole or not at all.

TFX's Pusher copies the model straight into `<serving_dir>/<version>/`, saved_model.pb last. A
copy that fails part-way (a full disk) leaves a version folder that TF Serving and a person
browsing serving_model/ take as a model: with files missing, or a truncated saved_model.pb. Here
the copy goes to `<serving_dir>/.staging/<version>/` (TF Serving ignores names that are not a
version number) and is renamed into place when complete, one atomic rename on a local or
mounted disk. A staged copy left by a failed push is removed by the next push. On object stores
(gs://, s3://) a folder cannot be renamed atomically: the stock copy is used there, saved_model.pb
last, as TF Serving expects.
"""
from __future__ import annotations

import logging
import os

from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from common import storage

STAGING_DIR = ".staging"


def _destination(exec_properties) -> pusher_pb2.PushDestination:
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    return destination


class AtomicPusherExecutor(pusher_executor.Executor):
    """TFX's Pusher, copying to a staging folder and renaming it to the version folder."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = _destination(exec_properties)
        base = destination.filesystem.base_directory
        if destination.WhichOneof("destination") != "filesystem" or storage.is_uri(base):
            super().Do(input_dict, output_dict, exec_properties)
            return
        staging = os.path.join(base, STAGING_DIR)
        if storage.exists(staging):
            logging.warning("Removing %s, left by a push that failed part-way", staging)
            storage.remove_tree(staging)
        destination.filesystem.base_directory = staging
        staged = dict(exec_properties)
        staged[standard_component_specs.PUSH_DESTINATION_KEY] = proto_utils.proto_to_json(
            destination)
        super().Do(input_dict, output_dict, staged)
        pushed = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not pushed.get_int_custom_property("pushed"):
            return   # not blessed: nothing was copied
        version = pushed.get_string_custom_property("pushed_version")
        final = os.path.join(base, version)
        if storage.exists(final):   # a push in the same second (the version is its time)
            logging.info("Destination %s already exists, skipping current push", final)
        else:
            storage.rename(os.path.join(staging, version), final)
        storage.remove_tree(staging)
        pushed.set_string_custom_property("pushed_destination", final)
        logging.info("Model version %s complete in %s", version, final)


def with_atomic_push(pusher):
    """The Pusher component, its executor replaced by AtomicPusherExecutor."""
    old = getattr(pusher.executor_spec, "executor_class", None)
    if old is not pusher_executor.Executor:
        raise ValueError(f"{pusher.id}: expected TFX's Pusher executor, got {old!r}")
    new = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)
    new.extra_flags = list(pusher.executor_spec.extra_flags)
    pusher.executor_spec = new
    return pusher
