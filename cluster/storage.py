"""Every input and output is a URI: a local path or ``s3://bucket/prefix``.

A URI is resolved once into a pyarrow filesystem plus a path on it.  S3 settings come only from the
standard AWS environment variables (or, with none set, the AWS default chain such as an IAM role):
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.  Addressing is path-style.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

# Environment variables a Ray worker needs to reach the same object store as the driver.
S3_ENV_VARS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_MAX_ATTEMPTS",
)
# Attempts per S3 request (the standard AWS_MAX_ATTEMPTS variable overrides it).  The SDK's default of 3
# gives up after ~1 s without a server; 8 attempts with its exponential backoff ride out ~25 s (a restarted
# S3 gateway, a throttling burst) before a write fails.
DEFAULT_S3_ATTEMPTS = 8


class StorageError(RuntimeError):
    """A URI that cannot be used: missing input, unreachable bucket, bad credentials."""


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem, the path on it, and the original URI for messages."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def child(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts) if self.is_s3 else os.path.join(self.path, *parts)
        return Location(self.fs, path, join_uri(self.uri, *parts))


def join_uri(uri: str, *parts: str) -> str:
    """``join_uri("s3://b/p", "graphs", "x")`` -> ``"s3://b/p/graphs/x"``; local paths join with os.path."""
    if uri.startswith("s3://"):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(uri, *parts)


def s3_filesystem_from_env(env: dict[str, str] | None = None) -> pafs.S3FileSystem:
    """An S3FileSystem configured from the standard AWS environment variables, path-style.

    Pickled (to a Ray worker, also inside Ray Data's read/write tasks) it is rebuilt from the receiving
    process's environment (:class:`EnvS3FileSystem`), which Ray's ``runtime_env`` fills from
    :func:`worker_env`: pyarrow's own pickle drops ``retry_strategy`` (a worker would retry 3 times, not
    ``DEFAULT_S3_ATTEMPTS``) and would carry the secret key inside the pickle."""
    env = dict(os.environ if env is None else env)
    kwargs: dict = {"region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_max_attempts(env))}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
        kwargs["force_virtual_addressing"] = False
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    return EnvS3FileSystem(**kwargs)


class EnvS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem whose pickle is "build me from your environment" (no settings, no keys)."""

    def __reduce__(self):
        return s3_filesystem_from_env, ()


def _max_attempts(env: dict[str, str]) -> int:
    value = env.get("AWS_MAX_ATTEMPTS", "").strip()
    if not value:
        return DEFAULT_S3_ATTEMPTS
    if not value.isdigit() or int(value) < 1:
        raise StorageError(f"AWS_MAX_ATTEMPTS={value!r}: expected a whole number >= 1")
    return int(value)


def resolve(uri: str) -> Location:
    """Resolve a local path or ``s3://bucket/prefix`` into a :class:`Location`."""
    if not uri:
        raise StorageError("empty URI")
    if uri.startswith("s3://"):
        path = uri[len("s3://"):].strip("/")
        if not path:
            raise StorageError(f"{uri!r} names no bucket")
        return Location(s3_filesystem_from_env(), path, uri.rstrip("/"))
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    path = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)
    return Location(pafs.LocalFileSystem(), path, path)


def worker_env() -> dict[str, str]:
    """The S3 variables of this process, for a Ray ``runtime_env`` so workers see the same store."""
    return {k: os.environ[k] for k in S3_ENV_VARS if k in os.environ}


def file_info(loc: Location) -> pafs.FileInfo:
    """FileInfo of a location, turning transport/auth failures into a StorageError naming the URI."""
    try:
        return loc.fs.get_file_info(loc.path)
    except OSError as err:  # pyarrow raises OSError for network, auth and bucket errors
        raise StorageError(f"cannot reach {loc.uri}: {err}") from err


def exists(loc: Location) -> bool:
    return file_info(loc).type != pafs.FileType.NotFound


def require_input(uri: str) -> Location:
    """Resolve an input URI and fail clearly, before any work, when it is missing or unreachable."""
    loc = resolve(uri)
    if not exists(loc):
        raise StorageError(f"input not found: {uri}")
    return loc


def identity(locations: list[Location]) -> dict:
    """What a run pins about its input files: their count, total size and a digest of every file's
    (URI, size, modification time) — so an input rewritten in place is noticed like a changed flag.
    (On S3 the modification time is the object's LastModified; pyarrow does not expose the ETag.)"""
    digest = hashlib.sha256()
    total = 0
    for loc in sorted(locations, key=lambda l: l.uri):
        info = file_info(loc)
        if info.type != pafs.FileType.File:
            raise StorageError(f"input not found: {loc.uri}")
        total += info.size
        digest.update(f"{loc.uri}\t{info.size}\t{info.mtime_ns}\n".encode())
    return {"files": len(locations), "bytes": total, "sha256": digest.hexdigest()}


def require_writable(uri: str) -> Location:
    """Resolve an output URI and prove it is writable by writing and deleting a probe object."""
    loc = resolve(uri)
    probe = loc.child(f".write-probe-{uuid.uuid4().hex}")
    try:
        if not loc.is_s3:
            loc.fs.create_dir(loc.path, recursive=True)
        with loc.fs.open_output_stream(probe.path) as out:
            out.write(b"ok")
        loc.fs.delete_file(probe.path)
    except OSError as err:
        raise StorageError(f"output not writable: {uri}: {err}") from err
    return loc


def ensure_dir(loc: Location) -> None:
    """Create a directory (a no-op on S3, where prefixes need no creation)."""
    if not loc.is_s3:
        loc.fs.create_dir(loc.path, recursive=True)


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a whole object so readers see either nothing or all of it.

    Local: write ``.tmp-*`` beside it then ``os.replace``.  S3: a single PUT is already atomic; a PUT
    that still fails after the retries (AWS_MAX_ATTEMPTS) is a StorageError naming the object.
    """
    if loc.is_s3:
        try:
            with loc.fs.open_output_stream(loc.path) as out:
                out.write(data)
        except OSError as err:
            raise StorageError(f"cannot write {loc.uri} (after retries; rerun to resume): {err}") from err
        return
    os.makedirs(os.path.dirname(loc.path), exist_ok=True)
    tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, loc.path)


def write_many(items: list[tuple[Location, bytes]], threads: int = 16) -> None:
    """Write many small objects: sequentially on a local disk, with concurrent PUTs on S3 (each PUT
    is a round trip; 16 in flight turn ~20 objects/s into hundreds)."""
    if not items:
        return
    if not items[0][0].is_s3 or threads <= 1:
        for loc, data in items:
            write_bytes_atomic(loc, data)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        for _ in pool.map(lambda item: write_bytes_atomic(*item), items):
            pass


def write_json(loc: Location, obj) -> None:
    write_bytes_atomic(loc, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as src:
        return src.read()


def read_json(loc: Location):
    return json.loads(read_bytes(loc))


def list_files(loc: Location, suffix: str = "") -> list[Location]:
    """Files under a directory/prefix (recursive), sorted by path; a single file lists itself."""
    info = file_info(loc)
    if info.type == pafs.FileType.File:
        return [loc]
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(loc.path, recursive=True)
    infos = [i for i in loc.fs.get_file_info(selector) if i.type == pafs.FileType.File]
    names = sorted(i.path for i in infos if i.path.endswith(suffix) and "/." not in i.path[len(loc.path):])
    return [Location(loc.fs, p, _uri_for(loc, p)) for p in names]


def _uri_for(base: Location, path: str) -> str:
    return f"s3://{path}" if base.is_s3 else path


def delete_tree(loc: Location) -> None:
    """Delete a directory/prefix and everything below it (missing is fine)."""
    if exists(loc):
        loc.fs.delete_dir(loc.path)
