"""Object storage for large inputs and results (issue #26): S3-compatible, through boto3.

Redis holds only references (`s3://bucket/key`): an input object is named by the submit's `input_url`
and streamed by the worker; a result too large for Redis, and every result of an object input, is
written by the worker at a key fixed by its job id (a re-run overwrites the same key, and a PUT or a
multipart upload is visible whole or not at all), and the job's `result` holds the reference.

Two kinds of failure, kept apart everywhere: `ObjectRejected` (the object cannot be used: missing,
forbidden, too big, not an array the model takes) fails a job at once or answers 422 at submit;
`StoreUnavailable` (the store is down or slow) answers 503 or retries the job like any transient error.

Cleanup survives restarts: every object the service creates (an upload key it hands out, a result)
is added to the `<prefix>:objects` ZSET with the time it may go, before it is written; workers sweep it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from jobqueue.model_signature import InputError, ModelSignature, TensorSpec, check_row_shape
from jobqueue.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger("asyncinfer.objects")

SCHEME = "s3://"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
HEADER_PROBE_BYTES = 4096  # a ranged GET this long holds any .npy header numpy writes for a model input
UPLOAD_FORMATS = {"npy": ".npy", "npz": ".npz", "json": ".json"}
SWEEP_BATCH = 500
READ_BUFFER_BYTES = 8 << 20


class ObjectRejected(Exception):
    """The object cannot be used; retrying cannot help (the message says why, naming the object)."""


class StoreUnavailable(Exception):
    """The object store did not answer, or answered that it is unavailable: try again later."""


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> ObjectRef:
        if not url.startswith(SCHEME):
            raise ValueError(f"must be an s3://bucket/key URL, got {url[:80]!r}")
        bucket, _, key = url[len(SCHEME) :].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise ValueError(f"must name a bucket and an object key (s3://bucket/key), got {url[:80]!r}")
        return cls(bucket, key)

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Location:
    """A bucket and a key prefix ('' = the whole bucket)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Location:
        bucket, _, prefix = url.strip()[len(SCHEME) :].partition("/")
        return cls(bucket, prefix.strip("/"))

    def holds(self, ref: ObjectRef) -> bool:
        return ref.bucket == self.bucket and (not self.prefix or ref.key.startswith(self.prefix + "/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def read_npy_header(stream: IO[bytes], name: str) -> NpyHeader:
    """The header of a .npy stream (left at the first data byte); ObjectRejected when it is not one a
    model can take: corrupt, Fortran order, object dtype (never unpickled), or a scalar."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError) as exc:
        raise ObjectRejected(f"{name} is not a valid .npy file: {exc}") from None
    if dtype.hasobject:
        raise ObjectRejected(f"{name}: object arrays are not accepted (they would need unpickling)")
    if fortran and len(shape) > 1:
        raise ObjectRejected(f"{name}: Fortran-ordered arrays are not accepted; save it C-ordered (np.ascontiguousarray)")
    if len(shape) == 0 or shape[0] == 0:
        raise ObjectRejected(f"{name}: must be an array of one or more rows, got shape {list(shape)}")
    return NpyHeader(tuple(int(d) for d in shape), np.dtype(dtype))


def check_against(header: NpyHeader, spec: TensorSpec, name: str) -> None:
    """An input array's dtype and row shape against one model input (ObjectRejected naming both)."""
    if spec.dtype is None:
        raise ObjectRejected(f"{name}: the model's input {spec.name!r} is not a tensor; send JSON instead")
    if header.dtype.kind != spec.dtype.kind and not (header.dtype.kind in "iu" and spec.dtype.kind in "iuf"):
        raise ObjectRejected(f"{name}: dtype {header.dtype} does not fit the model's input {spec.name!r} ({spec.elem_type})")
    try:
        check_row_shape(header.shape, spec, ("input_url",))
    except InputError as exc:
        raise ObjectRejected(f"{name}: {exc.msg} (array shape {list(header.shape)})") from None


def single_input(signature: ModelSignature, name: str) -> TensorSpec:
    if len(signature.inputs) != 1:
        names = [spec.name for spec in signature.inputs]
        raise ObjectRejected(f"{name}: this model has several inputs {names}: send an .npz with one array per input")
    return signature.inputs[0]


@dataclass(frozen=True)
class ObjectInfo:
    """What the API learns of an input object without downloading it."""

    size: int
    kind: str  # "npy", "npz" or "json"
    npy: NpyHeader | None = None


def sniff(first_bytes: bytes) -> str:
    if first_bytes.startswith(NPY_MAGIC):
        return "npy"
    if first_bytes.startswith(ZIP_MAGIC):
        return "npz"
    return "json"


class ObjectStore:
    """The configured store (OBJECT_STORE_URL): its home location, what `input_url` may name, and the
    few S3 calls the service makes, with S3's errors sorted into the two kinds above."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = Location.parse(settings.object_store_url)
        extra = [Location.parse(url) for url in settings.object_store_allowed.split(",") if url.strip()]
        self.allowed = (self.home, *extra)

    @cached_property
    def client(self) -> Any:
        import boto3  # imported on first use: a process without OBJECT_STORE_URL never pays for it
        from botocore.config import Config

        s = self.settings
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=s.object_store_timeout_seconds,
            read_timeout=s.object_store_timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},  # the job's own attempts are the real retries
        )
        key_id, secret = s.aws_access_key_id_value, s.aws_secret_access_key_value
        return boto3.client(
            "s3",
            endpoint_url=s.s3_endpoint_url or None,
            region_name=s.aws_region,
            aws_access_key_id=key_id or None,
            aws_secret_access_key=secret or None,
            config=config,
        )

    def permits(self, ref: ObjectRef) -> bool:
        return any(location.holds(ref) for location in self.allowed)

    # -- calls ---------------------------------------------------------------------------------

    def _call(self, what: str, ref_url: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise ObjectRejected(f"{ref_url} does not exist") from None
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise ObjectRejected(f"{ref_url}: access denied ({code}): the service's credentials cannot {what} it") from None
            if status == 416 or code == "InvalidRange":
                raise ObjectRejected(f"{ref_url} is empty") from None
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise StoreUnavailable(f"object store unavailable ({code or status}) on {what} {ref_url}") from None
            raise ObjectRejected(f"{ref_url}: {what} failed: {code} {error.get('Message', '')}".strip()) from None
        except NoCredentialsError:
            raise ObjectRejected(f"{ref_url}: no object-store credentials are configured (AWS_ACCESS_KEY_ID...)") from None
        except (BotoCoreError, OSError) as exc:  # connection refused, timeouts, a reset mid-body
            raise StoreUnavailable(f"object store unreachable on {what} {ref_url}: {exc}") from None

    def head(self, ref: ObjectRef) -> int:
        reply = self._call("read", ref.url, self.client.head_object, Bucket=ref.bucket, Key=ref.key)
        return int(reply["ContentLength"])

    def read_range(self, ref: ObjectRef, start: int, stop: int) -> bytes:
        reply = self._call(
            "read", ref.url, self.client.get_object, Bucket=ref.bucket, Key=ref.key, Range=f"bytes={start}-{stop - 1}"
        )
        return bytes(self._call("read", ref.url, reply["Body"].read))

    def open(self, ref: ObjectRef) -> io.BufferedReader:
        """The object's body as a buffered stream (read it in chunks; it is never held whole)."""
        reply = self._call("read", ref.url, self.client.get_object, Bucket=ref.bucket, Key=ref.key)
        return io.BufferedReader(_GuardedStream(self, ref.url, reply["Body"]), READ_BUFFER_BYTES)

    def download(self, ref: ObjectRef, path: Path) -> None:
        self._call("read", ref.url, self.client.download_file, Bucket=ref.bucket, Key=ref.key, Filename=str(path))

    def upload(self, path: Path, ref: ObjectRef, content_type: str) -> None:
        """A file to one key (multipart above 8 MiB: the object appears only when all of it is there)."""
        self._call(
            "write", ref.url, self.client.upload_file, Filename=str(path), Bucket=ref.bucket, Key=ref.key,
            ExtraArgs={"ContentType": content_type},
        )  # fmt: skip

    def put(self, ref: ObjectRef, body: bytes, content_type: str) -> None:
        self._call("write", ref.url, self.client.put_object, Bucket=ref.bucket, Key=ref.key, Body=body, ContentType=content_type)

    def reachable(self) -> None:
        """StoreUnavailable unless the home bucket answers (a forbidden or missing bucket is a misconfiguration: raised as is)."""
        url = f"{SCHEME}{self.home.bucket}"
        self._call("reach", url, self.client.head_bucket, Bucket=self.home.bucket)

    def presign_put(self, ref: ObjectRef) -> str:
        return str(
            self.client.generate_presigned_url(
                "put_object", Params={"Bucket": ref.bucket, "Key": ref.key}, ExpiresIn=self.settings.presign_expiry_seconds
            )
        )

    def presign_get(self, ref: ObjectRef) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": ref.bucket, "Key": ref.key}, ExpiresIn=self.settings.presign_expiry_seconds
            )
        )

    def presign_get_url(self, url: str) -> str:
        return self.presign_get(ObjectRef.parse(url))

    def delete(self, keys: Sequence[str]) -> None:
        """Delete keys of the home bucket (missing ones are no error)."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": key} for key in keys[start : start + 1000]]
            self._call("delete", f"{SCHEME}{self.home.bucket}", self.client.delete_objects,
                       Bucket=self.home.bucket, Delete={"Objects": chunk, "Quiet": True})  # fmt: skip

    # -- what the service names ----------------------------------------------------------------

    def upload_ref(self, fmt: str) -> ObjectRef:
        return ObjectRef(self.home.bucket, self.home.key(f"uploads/{uuid.uuid4().hex}{UPLOAD_FORMATS[fmt]}"))

    def content_ref(self, content: bytes, fmt: str) -> ObjectRef:
        """An upload key named by its content: the same input (an idempotent replay) names the same object,
        so its job's payload, and the fingerprint a replay is compared by, stay the same."""
        digest = hashlib.sha256(content).hexdigest()
        return ObjectRef(self.home.bucket, self.home.key(f"uploads/{digest}{UPLOAD_FORMATS[fmt]}"))

    def result_ref(self, job_id: str, suffix: str) -> ObjectRef:
        """Fixed by the job: every run of a job writes the same key, so a re-run never makes a second result."""
        return ObjectRef(self.home.bucket, self.home.key(f"results/{job_id}{suffix}"))

    def inspect(self, ref: ObjectRef) -> ObjectInfo:
        """Size and format of an input object from a HEAD and one ranged GET of its first bytes (the
        .npy header): never its body."""
        size = self.head(ref)
        if size > self.settings.max_object_bytes:
            raise ObjectRejected(f"{ref.url} is {size} bytes, over MAX_OBJECT_BYTES ({self.settings.max_object_bytes})")
        if size == 0:
            raise ObjectRejected(f"{ref.url} is empty")
        first = self.read_range(ref, 0, min(size, HEADER_PROBE_BYTES))
        kind = sniff(first)
        if kind != "npy":
            return ObjectInfo(size, kind)
        probe = io.BytesIO(first)
        header = read_npy_header(probe, ref.url)
        if probe.tell() + header.shape[0] * header.row_bytes != size:
            raise ObjectRejected(f"{ref.url} is not a valid .npy file: its header says {list(header.shape)} {header.dtype}, "
                                 f"which is not its {size} bytes")  # fmt: skip
        return ObjectInfo(size, kind, header)


class _GuardedStream(io.RawIOBase):
    """A response body whose read errors are sorted like every other call's (a reset mid-body: retry)."""

    def __init__(self, store: ObjectStore, url: str, body: Any) -> None:
        self._store, self._url, self._body = store, url, body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return bytes(self._store._call("read", self._url, self._body.read, amt=None if size < 0 else size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def object_store(settings: Settings) -> ObjectStore | None:
    """The store when OBJECT_STORE_URL is set; None = the feature is off."""
    return ObjectStore(settings) if settings.object_store_url else None


# -- cleanup: a ZSET of keys by deletion time, swept by workers -----------------------------------


def schedule_deletion(client: redis.Redis, key: str, ref: ObjectRef, at_ms: int) -> None:
    """Record that the service created (or is about to create) `ref`: it goes at `at_ms`. Never moves
    a deletion earlier (GT), so a re-run's registration cannot shorten an earlier one."""
    client.zadd(key, {ref.key: at_ms}, gt=True)  # GT still adds a new member


def sweep(client: redis.Redis, key: str, store: ObjectStore, now_ms: int) -> int:
    """Delete the objects whose time has come; returns how many. Safe with many sweepers at once
    (deleting twice is no error) and after a crash (what was not deleted stays in the set)."""
    due = [k.decode() if isinstance(k, bytes) else str(k) for k in client.zrangebyscore(key, "-inf", now_ms, 0, SWEEP_BATCH)]
    if not due:
        return 0
    store.delete(due)
    client.zrem(key, *due)
    return len(due)
