"""A real S3-compatible server for the tests: moto in server mode on 127.0.0.1 (a free port).

:func:`s3_server` starts it once per session and points the ``AWS_*`` variables at it
(boto3, pyarrow's ``S3FileSystem`` and Ray Train all read ``AWS_ENDPOINT_URL``), so
subprocesses launched by a test (``soundtrack ...``) reach it too; :func:`new_bucket`
makes a fresh bucket per test. Needs ``moto[server]`` (the test extra).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

_COUNTER = itertools.count()


def s3_env(endpoint: str, home: Path) -> dict[str, str]:
    """The ``AWS_*`` variables that reach the server (moto's fake credentials, no ~/.aws files)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service
        # no ~/.aws files are read or written
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
    }


class S3Server:
    """A started moto server and the environment that reaches it."""

    def __init__(self, tmp: Path):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = s3_env(self.endpoint, tmp)
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def client(self):
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint)

    def new_bucket(self, prefix: str = "st") -> str:
        name = f"{prefix}-{os.getpid()}-{next(_COUNTER)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def stop(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._server.stop()
