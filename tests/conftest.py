"""Shared test fixtures: the ../shared data, a real S3 bucket on radosgw and the local Ray head.

``make test`` starts radosgw and a Ray head (cluster/local/with_services.sh) and exports their
addresses; run plain ``pytest`` and this file starts them itself for the session (and stops them).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CC3M_TSV = SHARED / "data" / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv"


def _source_env(path: Path) -> None:
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = shlex.split(value)[0] if value else ""


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """S3 + Ray env vars; started here only when `make test` has not started them already."""
    if os.environ.get("GENECIS_TEST_SERVICES") == "1":
        yield
        return
    state = tmp_path_factory.mktemp("services")
    local = ROOT / "cluster" / "local"
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(local / "s3_server.sh"), "start", str(state / "s3"),
                    os.environ.get("S3_PORT", "9115")], check=True, env=env)
    _source_env(state / "s3" / "s3.env")
    env.update(os.environ)
    subprocess.run(["bash", str(local / "ray_head.sh"), "start", str(state / "ray"),
                    os.environ.get("RAY_PORT", "6395")], check=True,
                   env={**env, "RAY_DASHBOARD_PORT": os.environ.get("RAY_DASHBOARD_PORT", "8275")})
    _source_env(state / "ray" / "ray.env")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        subprocess.run(["bash", str(local / "ray_head.sh"), "stop", str(state / "ray")], check=False)
        subprocess.run(["bash", str(local / "s3_server.sh"), "stop", str(state / "s3")], check=False)


@pytest.fixture(scope="session")
def ray_session(services):
    """The driver connected to the local Ray head (one per test session)."""
    import ray

    from cluster.storage import worker_env

    ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": worker_env()})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_client(services):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def s3_bucket(s3_client) -> str:
    """A fresh bucket on radosgw; returns ``s3://name``."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def cc3m_tsv() -> Path:
    if not CC3M_TSV.exists():
        pytest.skip("../shared CC3M sample not present")
    return CC3M_TSV
