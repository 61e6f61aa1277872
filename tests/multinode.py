"""A two-node Ray cluster on one machine, for the multi-node and fault tests.

* The **head** runs no work: it is started with ``--num-cpus 0`` (as ``cluster/cluster.yaml``'s head), so
  every task and actor that asks for a CPU — parse actors, Ray Data tasks, mine tasks, training workers,
  decode and encode actors — can only run on the worker node.  Zero-CPU helpers (progress counters, Ray
  Train's controller, which Ray pins to the driver's node) may sit on the head.
* The **worker node** is a second ``ray start --address HEAD`` with its own temp dir, ports, CPUs and a
  custom resource ``worker_node``, started in its own session so it can be killed as a whole (raylet, its
  workers and agents: a node lost).  Where the process may create a mount namespace (root, ``unshare``),
  it runs with the test session's temp folder hidden behind an empty tmpfs: a stage that writes a file on
  the driver's local disk and expects a worker to read it fails here, as it would on two machines.
* Ports come from ``GENECIS_MULTINODE_SLOT`` (0 under ``make test``; helper sessions use their slot), so
  several such clusters and the suite's own head can share the machine.
* Storage is the suite's radosgw: the ``AWS_*`` variables are exported before each ``ray start``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
WORKER_RESOURCE = "worker_node"


def session_pids(sid: int) -> list[int]:
    """PIDs of every live process of session ``sid`` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL, wait_s: float = 30.0) -> int:
    """Send ``sig`` to every process of session ``sid`` until none is left; returns how many were signalled."""
    signalled: set[int] = set()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pids = session_pids(sid)
        if not pids:
            return len(signalled)
        for pid in pids:
            try:
                os.kill(pid, sig)
                signalled.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"processes of session {sid} survived {wait_s:.0f} s: {session_pids(sid)}")


def wait_for(what: str, predicate, proc: subprocess.Popen, log: Path, timeout: float, poll_s: float = 0.5):
    """Poll ``predicate`` until it returns something truthy (returned); fail the test, with the end of the
    driver's log, when the driver exits first or ``timeout`` passes (the driver's session is then killed)."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(poll_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    kill_session(proc.pid)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _pgrep(pattern: str) -> list[int]:
    res = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()]


def can_hide_folders() -> bool:
    """True when this process may give the worker node a private mount namespace (root + unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return res.returncode == 0


class TwoNodeCluster:
    """A 0-CPU head and one worker node (``worker_cpus`` CPUs, resource ``worker_node``) on this machine."""

    def __init__(self, state: Path, slot: int = 0, worker_cpus: int = 2, hide: tuple[Path, ...] = ()) -> None:
        self.state = state
        self.slot = slot
        self.worker_cpus = worker_cpus
        self.hide = tuple(hide) if can_hide_folders() else ()
        # Fixed per slot, so a cluster left by a killed test session is found and stopped; short, because
        # Ray's unix socket paths live below them.
        self.head_dir = Path(f"/tmp/gmn{slot}h")
        self.worker_tmp = Path(f"/tmp/gmn{slot}w")
        self.gcs_port = 6450 + slot
        self.dashboard_port = 8350 + slot
        self.worker_sid: int | None = None
        self.worker_starts = 0

    # ----------------------------------------------------------------------------------- environment
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def api_server(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver (``python -m ...``) that joins this cluster."""
        return {**os.environ, "RAY_ADDRESS": self.address, "RAY_API_SERVER_ADDRESS": self.api_server,
                "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}

    def _ray_env(self) -> dict[str, str]:
        # Node deaths noticed in ~3 s instead of ~15 s (read by the GCS from the environment).
        return {**self.env(), "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}

    def _ports(self, node: int) -> list[str]:
        lo = 40000 + self.slot * 400 + node * 200
        return [f"--min-worker-port={lo}", f"--max-worker-port={lo + 199}",
                f"--dashboard-agent-listen-port={52450 + self.slot * 2 + node}"]

    # ---------------------------------------------------------------------------------------- start
    def start(self) -> "TwoNodeCluster":
        self.stop()
        self.state.mkdir(parents=True, exist_ok=True)
        env = {**self._ray_env(), "RAY_NUM_CPUS": "0", "RAY_DASHBOARD_PORT": str(self.dashboard_port),
               "RAY_CLIENT_SERVER_PORT": str(30050 + self.slot), "RAY_OBJECT_STORE_BYTES": "500000000",
               "RAY_MIN_WORKER_PORT": str(40000 + self.slot * 400), "RAY_MAX_WORKER_PORT":
                   str(40000 + self.slot * 400 + 199), "RAY_DASHBOARD_AGENT_PORT": str(52450 + self.slot * 2)}
        shutil.rmtree(self.head_dir, ignore_errors=True)
        res = subprocess.run(["bash", str(ROOT / "cluster" / "local" / "ray_head.sh"), "start", str(self.head_dir),
                              str(self.gcs_port)], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"the head did not start:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        self.start_worker()
        return self

    def start_worker(self) -> str:
        """Start (or restart) the worker node; returns its node id once the head lists it alive."""
        shutil.rmtree(self.worker_tmp, ignore_errors=True)
        cmd = [RAY, "start", f"--address={self.address}", f"--num-cpus={self.worker_cpus}",
               f"--resources={json.dumps({WORKER_RESOURCE: 1})}", f"--temp-dir={self.worker_tmp}",
               "--object-store-memory=500000000", "--disable-usage-stats", *self._ports(1)]
        if self.hide:
            mounts = " && ".join(f"mount -t tmpfs -o size=1m tmpfs {d}" for d in self.hide)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'{mounts} && exec "$@"', "sh", *cmd]
        log = self.state / f"worker-start-{self.worker_starts}.log"
        self.state.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            res = subprocess.run(["setsid", *cmd], env=self._ray_env(), stdout=out, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            raise RuntimeError(f"worker node did not start:\n{log.read_text()[-3000:]}")
        raylets = _pgrep(f"raylet.*{self.worker_tmp}")
        if not raylets:
            raise RuntimeError(f"no raylet of the worker node found:\n{log.read_text()[-3000:]}")
        self.worker_sid = os.getsid(raylets[0])
        self.worker_starts += 1
        return self.wait_worker_alive()

    # ------------------------------------------------------------------------------------- the nodes
    def nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        with self.state_api():
            found = list_nodes(address=self.api_server, detail=True, raise_on_missing_output=False)
        return [n.__dict__ if hasattr(n, "__dict__") else dict(n) for n in found]

    @contextlib.contextmanager
    def state_api(self):
        """Ray's State API prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS from the environment over the
        ``address`` it is given, and `make test` exports the suite's own head there: point both at this
        cluster for the call."""
        saved = {k: os.environ.get(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")}
        os.environ.update(RAY_API_SERVER_ADDRESS=self.api_server, RAY_ADDRESS=self.address)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def worker_nodes(self, state: str = "ALIVE") -> list[dict]:
        return [n for n in self.nodes() if n["state"] == state and
                (n.get("resources_total") or {}).get(WORKER_RESOURCE)]

    def wait_worker_alive(self, timeout: float = 120) -> str:
        from ray.util.state.exception import RayStateApiException

        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                alive = self.worker_nodes()
            except (RayStateApiException, ConnectionError) as err:  # the dashboard may still be starting
                alive, last = [], err
            if alive:
                return alive[0]["node_id"]
            time.sleep(1)
        raise RuntimeError(f"the worker node did not register within {timeout:.0f} s (last error: {last})")

    def kill_worker(self, timeout: float = 60) -> int:
        """SIGKILL every process of the worker node (a node lost), then wait until the head has marked it
        dead.  Returns how many processes were killed."""
        assert self.worker_sid is not None, "no worker node running"
        before = {n["node_id"] for n in self.worker_nodes()}
        killed = kill_session(self.worker_sid)
        self.worker_sid = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not before & {n["node_id"] for n in self.worker_nodes()}:
                return killed
            time.sleep(0.5)
        raise RuntimeError(f"the head still lists the killed worker node after {timeout:.0f} s")

    def node_of(self, node_id: str) -> str:
        """'head' or 'worker' for a node id of this cluster."""
        for n in self.nodes():
            if n["node_id"] == node_id:
                return "head" if n.get("is_head_node") else "worker"
        raise KeyError(node_id)

    def actor_nodes(self, name_part: str) -> dict[str, str]:
        """``{actor_id: 'head'|'worker'}`` for every actor (alive or dead) this cluster has run whose class
        or display name contains ``name_part`` (Ray Data's show as ``MapWorker(MapBatches(ParseShardWorker))``)."""
        from ray.util.state import list_actors

        with self.state_api():
            actors = list_actors(address=self.api_server, limit=10_000, detail=True,
                                 raise_on_missing_output=False)
        kinds = {n["node_id"]: ("head" if n.get("is_head_node") else "worker") for n in self.nodes()}
        return {a.actor_id: kinds.get(a.node_id, "unknown") for a in actors
                if name_part in (a.class_name or "") or name_part in (getattr(a, "repr_name", "") or "")}

    # ------------------------------------------------------------------------------------------ stop
    def stop(self) -> None:
        if self.worker_sid is not None:
            kill_session(self.worker_sid)
            self.worker_sid = None
        for raylet in _pgrep(f"raylet.*{self.worker_tmp}"):  # a worker node left from an earlier run
            kill_session(os.getsid(raylet))
        subprocess.run(["bash", str(ROOT / "cluster" / "local" / "ray_head.sh"), "stop", str(self.head_dir)],
                       check=False, capture_output=True)
        shutil.rmtree(self.worker_tmp, ignore_errors=True)
