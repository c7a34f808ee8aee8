"""A local S3-compatible server for the tests: moto's server mode in a process of its own on 127.0.0.1, with
credentials checked (a wrong secret is refused as by AWS), so a test can also kill it mid-transfer.

    with S3Server() as s3:
        s3.env              # AWS_ENDPOINT_URL and a valid key pair: monkeypatch them into os.environ
        s3.put(folder, "bucket/d.zarr")
        s3.kill()           # the server dies: every read after this fails to connect

moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unchecked: the ones that create the
user, its key and its permissions. Every request after them must be signed with that key.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "omgmg-test"
_SETUP_REQUESTS = 3  # create_user, put_user_policy, create_access_key
_ALLOW_S3 = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_up()
        self.env = self._make_user()
        self.client().create_bucket(Bucket=BUCKET)

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError("moto's S3 server did not start within 60 s")

    def _make_user(self) -> dict[str, str]:
        import boto3

        iam = boto3.client(
            "iam", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="omgmg")
        iam.put_user_policy(UserName="omgmg", PolicyName="s3", PolicyDocument=_ALLOW_S3)
        key = iam.create_access_key(UserName="omgmg")["AccessKey"]
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def put(self, folder, key: str) -> None:
        """Upload every file under ``folder`` to ``s3://BUCKET/key/...``."""
        client = self.client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.put_object(Bucket=BUCKET, Key=f"{key}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())

    def names(self, prefix: str = "") -> list[str]:
        listed = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in listed for o in page.get("Contents", [])]

    def keys(self, prefix: str = "") -> dict[str, bytes]:
        client = self.client()
        return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in self.names(prefix)}

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
