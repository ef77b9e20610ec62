"""An S3 server on loopback for tests (moto's), with the environment a pod on a KFP cluster with
MinIO gets: credentials, region, and the endpoint for tensorflow-io (S3_ENDPOINT, with its
http:// scheme: without one tensorflow-io 0.37.1 speaks TLS) and for boto3/Beam."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from typing import Dict, Iterator

import boto3
from moto.server import ThreadedMotoServer


@dataclasses.dataclass
class S3Server:
    endpoint: str          # http://127.0.0.1:PORT
    env: Dict[str, str]    # what a process (a task) needs to reach it
    client: object         # a boto3 S3 client for it

    def read(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def keys(self, bucket: str, prefix: str = "") -> list:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def upload_folder(self, folder: str, bucket: str, prefix: str) -> None:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                self.client.upload_file(path, bucket, f"{prefix.rstrip('/')}/{name}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(*buckets: str) -> Iterator[S3Server]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "S3_ENDPOINT": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    try:
        yield S3Server(endpoint, env, client)
    finally:
        server.stop()
