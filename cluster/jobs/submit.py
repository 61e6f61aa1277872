"""Submit one stage (or the pipeline) as a Ray job, carrying this shell's S3 settings into its runtime env.

    python cluster/jobs/submit.py [--address URL] [--dry-run] [--no-wait] [--without-keys]
        [--entrypoint-num-cpus N] [--entrypoint-num-gpus N] STAGE [ARGS of cluster/jobs/STAGE.sh ...]

    STAGE: world | mine | clip | combiner | benchmark | evaluate | pipeline

It is ``ray job submit --working-dir <repo> -- bash cluster/jobs/STAGE.sh ARGS`` plus a runtime env whose
``env_vars`` are the S3 variables set in this shell (the names ``cluster.storage`` reads: endpoint, region,
keys, checksum mode), so a job on a cluster without an instance profile (``cluster/local.yaml``, a
radosgw or MinIO endpoint) reaches the same storage as the submitter.  The values go to the job API
directly through Ray's SDK: never into a file, a command line or this program's output, which names the
forwarded variables with their values masked.  Ray keeps a job's runtime env with the job, so whoever can
reach the job API can read it: ``--without-keys`` forwards only the non-key settings (on
``cluster/cluster.yaml`` the nodes' instance profile provides access and no key needs to travel).

``world`` and ``benchmark`` run a process pool inside the entrypoint: with ``--workers N`` and no
``--entrypoint-num-cpus``, N CPUs are reserved for the entrypoint (which also moves it off a head that
has no CPU).  Without ``--no-wait`` the job's log is followed until it ends; the exit code is 0 when it
succeeded, 1 when it failed or was stopped, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).resolve().parent
STAGES = ("world", "mine", "clip", "combiner", "benchmark", "evaluate", "pipeline")
POOL_STAGES = ("world", "benchmark")  # a process pool inside the entrypoint
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
MASK = "***"


def s3_env_names() -> tuple[str, ...]:
    """The S3 variables the project reads (cluster.storage.S3_ENV_VARS), imported from the repo."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from cluster.storage import S3_ENV_VARS

    return tuple(S3_ENV_VARS)


def forwarded_env(environ: Mapping[str, str], with_keys: bool = True) -> dict[str, str]:
    """The S3 settings of ``environ`` that the job gets (only variables that are set and non-empty)."""
    names = [n for n in s3_env_names() if with_keys or n not in KEY_VARS]
    return {n: environ[n] for n in names if environ.get(n)}


def _workers(args: Sequence[str]) -> float | None:
    """The value of ``--workers N`` / ``--workers=N`` in a stage's arguments (None when absent)."""
    for i, arg in enumerate(args):
        value = None
        if arg == "--workers" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--workers="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None  # the stage itself reports the bad value
    return None


def build_job(stage: str, args: Sequence[str], environ: Mapping[str, str], *, with_keys: bool = True,
              entrypoint_num_cpus: float | None = None,
              entrypoint_num_gpus: float | None = None) -> dict[str, Any]:
    """The keyword arguments of ``JobSubmissionClient.submit_job`` for one stage."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    script = f"cluster/jobs/{stage}.sh"
    if not (REPO / script).is_file():
        raise ValueError(f"{script} is missing from {REPO}")
    if entrypoint_num_cpus is None and stage in POOL_STAGES:
        workers = _workers(args)
        entrypoint_num_cpus = workers if workers and workers > 0 else None
    job: dict[str, Any] = {
        "entrypoint": shlex.join(["bash", script, *args]),
        "runtime_env": {"working_dir": str(REPO), "excludes": [".git"],
                        "env_vars": forwarded_env(environ, with_keys)},
    }
    if entrypoint_num_cpus is not None:
        job["entrypoint_num_cpus"] = entrypoint_num_cpus
    if entrypoint_num_gpus is not None:
        job["entrypoint_num_gpus"] = entrypoint_num_gpus
    return job


def safe_address(address: str) -> str:
    """The address with any ``user:password@`` part masked."""
    scheme, sep, rest = address.rpartition("://")
    host = rest.rsplit("@", 1)[-1]
    return f"{scheme}{sep}{MASK}@{host}" if "@" in rest else address


def describe(job: Mapping[str, Any], address: str) -> str:
    """What will be submitted, every environment value masked."""
    env = job["runtime_env"]["env_vars"]
    lines = [f"address:     {safe_address(address)}",
             f"entrypoint:  {job['entrypoint']}",
             f"working_dir: {job['runtime_env']['working_dir']} (excludes .git and .gitignore'd files)",
             "env_vars:    " + (" ".join(f"{k}={MASK}" for k in sorted(env)) or "(none set in this shell)")]
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus"):
        if key in job:
            lines.append(f"{key}: {job[key]:g}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python cluster/jobs/submit.py", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None,
                   help="the cluster's job API, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS, else that)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted (values masked)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting, without following the log")
    p.add_argument("--without-keys", action="store_true",
                   help=f"do not forward {', '.join(KEY_VARS)} (access from an instance profile)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                   help="CPUs reserved for the entrypoint (world/benchmark: default --workers)")
    p.add_argument("--entrypoint-num-gpus", type=float, default=None, help="GPUs reserved for the entrypoint")
    p.add_argument("stage", choices=STAGES, help="cluster/jobs/STAGE.sh is the entrypoint")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of cluster/jobs/STAGE.sh")
    return p


def _follow(client: Any, job_id: str) -> int:
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
    status = str(client.get_job_status(job_id))
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status.endswith("SUCCEEDED") else 1


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    import os

    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    address = args.address or env.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    try:
        job = build_job(args.stage, args.args, env, with_keys=not args.without_keys,
                        entrypoint_num_cpus=args.entrypoint_num_cpus,
                        entrypoint_num_gpus=args.entrypoint_num_gpus)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(describe(job, address), flush=True)
    if args.dry_run:
        return 0
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except ConnectionError as err:
        print(f"error: cannot reach the Ray job API at {safe_address(address)} ({type(err).__name__})",
              file=sys.stderr)
        return 2
    job_id = client.submit_job(**job)
    print(f"submitted {job_id}; follow it with: ray job logs --address {safe_address(address)} -f {job_id}",
          flush=True)
    return 0 if args.no_wait else _follow(client, job_id)


if __name__ == "__main__":
    raise SystemExit(main())
