"""Ray plumbing every launcher shares: joining or starting Ray, quiet logs, and progress lines.

* :func:`init_ray` joins ``address`` / ``RAY_ADDRESS`` or starts a private local instance, with a
  runtime env that gives every worker the S3 variables (:func:`cluster.storage.worker_env`) and one
  thread per BLAS/OpenMP pool.  A local instance pins its own dashboard / State API address on a free
  port (``RAY_API_SERVER_ADDRESS``): on a shared machine Ray Train's placement-group cleaner would
  otherwise ask another Ray instance's State API about our run and may remove a healthy run's
  placement group (ENVIRONMENT.md §4b).
* Quiet logs: Ray Data's progress bars, its per-dataset progress blocks and its INFO lines stay out of
  the job log (they still go to ``ray-data.log`` in the Ray session's log folder); the readable signal is
  the project's own one line per interval.
* :class:`ProgressCounter` is a tiny actor that workers report to; :func:`poll_progress` is the driver
  thread that prints a ``Progress`` line from it every interval and a final line; :func:`track` does the
  same for a set of task refs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from typing import Any, Callable, Hashable, Iterator, Mapping, TypeVar

import ray

from cluster import storage
from cluster.progress import Progress

K = TypeVar("K", bound=Hashable)
THREAD_CAPS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runtime_env_vars(extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of every Ray worker: the S3 variables, thread caps, the State API address, extras."""
    env = {**storage.worker_env(), **THREAD_CAPS}
    if API_SERVER_ENV in os.environ:
        env[API_SERVER_ENV] = os.environ[API_SERVER_ENV]
    return {**env, **(extra_env or {})}


def init_ray(address: str | None = None, extra_env: Mapping[str, str] | None = None) -> None:
    """Join ``address`` (default ``RAY_ADDRESS``) or start a local Ray instance with its own dashboard port.

    A no-op when this process is already connected (the quiet-log settings are applied either way)."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address is None:
            port = free_port()
            os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"  # before init: Ray's processes inherit it
            kwargs.update(dashboard_host="127.0.0.1", dashboard_port=port)
        ray.init(address=address, runtime_env={"env_vars": runtime_env_vars(extra_env)}, **kwargs)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """No progress bars or progress blocks from Ray Data on the console; its detail goes to its log file."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # ...and Ray Data's warning that they are off, which says how to turn them back on
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # Ray Train 2.60 reads a deprecated Ray Data option itself (ExecutionOptions.exclude_resources)
    warnings.filterwarnings("ignore", message=r".*exclude_resources.* is deprecated")
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # Ray Data's console handler; its file handler keeps INFO
            handler.setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------- progress
class ProgressCounter:
    """Workers report ``add(done, skipped)``; the driver polls ``totals()`` (a zero-CPU actor)."""

    def __init__(self) -> None:
        self.done = 0
        self.skipped = 0

    def add(self, done: int, skipped: int = 0) -> None:
        self.done += done
        self.skipped += skipped

    def totals(self) -> tuple[int, int]:
        return self.done, self.skipped


def on_driver_node() -> dict[str, Any]:
    """Actor options that keep a zero-CPU bookkeeping actor (progress counter, run state) on the driver's
    node: on a cluster a worker node may be lost mid-run, and with it every actor on it; the driver's node
    lives as long as the run does (Ray Train pins its controller there for the same reason)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                  soft=False)}


def progress_counter() -> Any:
    """A new :class:`ProgressCounter` actor (needs no CPU, so it never competes with the work), on the
    driver's node."""
    return ray.remote(num_cpus=0, **on_driver_node())(ProgressCounter).remote()


@contextlib.contextmanager
def poll_progress(counter: Any | None, progress: Progress,
                  on_poll: Callable[[Progress], None] | None = None) -> Iterator[Progress]:
    """While the body runs, a driver thread copies the counter's totals into ``progress`` and prints
    one line every ``progress.interval_s`` (``on_poll`` may refine it first, e.g. set its total).  When
    the body succeeds, a final line is printed from the final totals.  Without a counter the body
    itself moves ``progress`` (``done``, ``note``) and the thread is a heartbeat for a long step."""
    stop = threading.Event()

    lost: list[str] = []

    def poll() -> None:
        if counter is not None and not lost:
            try:
                progress.done, progress.skipped = ray.get(counter.totals.remote())
            except ray.exceptions.RayActorError as err:  # its node is gone: the work will tell the rest
                lost.append(type(err).__name__)
                progress.note = f"progress counter lost ({lost[0]})"
        if on_poll is not None:
            on_poll(progress)

    def loop() -> None:
        while not stop.wait(progress.interval_s):
            poll()
            progress.update(force=True)

    watcher = threading.Thread(target=loop, name=f"progress-{progress.what}", daemon=True)
    watcher.start()
    try:
        yield progress
    finally:
        stop.set()
        watcher.join()
    poll()
    progress.finish()


def track(refs: Mapping[Any, K], progress: Progress,
          count: Callable[[Any], tuple[int, int]]) -> dict[K, Any]:
    """Wait for every task ref (``ref -> key``), printing one line per interval and a final line;
    ``count(result)`` gives the (done, skipped) a result adds.  Returns ``{key: result}``."""
    results: dict[K, Any] = {}
    remaining = list(refs)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1, timeout=progress.interval_s)
        for ref in ready:
            results[refs[ref]] = result = ray.get(ref)
            done, skipped = count(result)
            progress.done, progress.skipped = progress.done + done, progress.skipped + skipped
        if remaining:  # the last result is shown by the final line
            progress.update(force=not ready)
    progress.finish()
    return results
