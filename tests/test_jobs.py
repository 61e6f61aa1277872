"""cluster/jobs/: one entrypoint per stage and the pipeline, and submit.py's runtime env (values never shown).

No Ray is started: the scripts are run with a stand-in ``python`` first on PATH that records its argv
(what the script would hand the stage), and that argv is then given to the real stage CLI with ``--help``
appended, which proves the module exists and declares every flag the script injects.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.storage import S3_ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "cluster" / "jobs"


def _load_submit():
    spec = importlib.util.spec_from_file_location("genecis_jobs_submit", JOBS / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = _load_submit()

# stage -> (script args, argv the script must hand to python, flags it injects)
WIRING = {
    "world": (["/abs/world", "--images", "5"],
              ["-m", "synthetic", "world", "--output", "/abs/world", "--images", "5"], ["--output"]),
    "mine": (["s3://b/in.tsv", "/abs/mined", "--num-triplets", "10"],
             ["-m", "miner", "run", "--input", "s3://b/in.tsv", "--output", "/abs/mined", "--num-triplets", "10"],
             ["--input", "--output"]),
    "clip": (["s3://b/runs", "clip", "/abs/world", "--max-steps", "3"],
             ["-m", "trainer", "clip", "--storage-path", "s3://b/runs", "--name", "clip", "--captions",
              "/abs/world", "--max-steps", "3"], ["--storage-path", "--name", "--captions"]),
    "combiner": (["s3://b/runs", "comb", "/abs/mined/triplets/train", "/abs/world", "--finetune", "frozen"],
                 ["-m", "trainer", "combiner", "--storage-path", "s3://b/runs", "--name", "comb", "--triplets",
                  "/abs/mined/triplets/train", "--images", "/abs/world", "--finetune", "frozen"],
                 ["--storage-path", "--name", "--triplets", "--images"]),
    "benchmark": (["/abs/bench", "--templates", "7"],
                  ["-m", "synthetic", "benchmark", "--output", "/abs/bench", "--templates", "7"], ["--output"]),
    "evaluate": (["tiny", "s3://b/eval", "--benchmark", "/abs/bench"],
                 ["-m", "evaluator", "genecis", "--model", "tiny", "--output", "s3://b/eval", "--benchmark",
                  "/abs/bench"], ["--model", "--output"]),
    "pipeline": (["cluster/configs/demo.yaml", "s3://b/genecis", "--name", "n"],
                 ["-m", "cluster", "pipeline", "--config", "cluster/configs/demo.yaml", "--storage",
                  "s3://b/genecis", "--name", "n"], ["--config", "--storage"]),
}


def test_every_stage_has_a_script():
    assert set(WIRING) == set(submit.STAGES)
    scripts = {p.stem for p in JOBS.glob("*.sh")}
    assert scripts == set(submit.STAGES), scripts


def _run_script(stage, args, tmp_path, env_extra=None):
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_OUT"\n')
    (shim / "python").chmod(0o755)
    out = tmp_path / f"{stage}.argv"
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "ARGV_OUT": str(out),
           **(env_extra or {})}
    proc = subprocess.run(["bash", str(JOBS / f"{stage}.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=30)
    argv = out.read_text().splitlines() if out.exists() else None
    return proc, argv


_HELP: dict[tuple[str, ...], str] = {}


def _stage_help(module_argv: tuple[str, ...]) -> str:
    if module_argv not in _HELP:
        proc = subprocess.run([sys.executable, *module_argv, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        _HELP[module_argv] = proc.stdout
    return _HELP[module_argv]


@pytest.mark.slow  # one `--help` per stage CLI (torch imports)
@pytest.mark.parametrize("stage", sorted(WIRING))
def test_script_hands_the_stage_its_flags(stage, tmp_path):
    args, expected, injected = WIRING[stage]
    proc, argv = _run_script(stage, args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert argv == expected
    help_text = _stage_help(tuple(expected[:3]))  # e.g. -m trainer clip
    for flag in injected:
        assert re.search(rf"(?m)^\s+{re.escape(flag)}\b", help_text), f"{flag} not a flag of {expected[:3]}"


@pytest.mark.parametrize("stage", sorted(WIRING))
def test_script_without_arguments_is_a_usage_error(stage, tmp_path):
    proc, argv = _run_script(stage, [], tmp_path)
    assert (proc.returncode, argv) == (2, None)
    assert proc.stderr.startswith(f"error: usage: cluster/jobs/{stage}.sh"), proc.stderr


def test_pipeline_refuses_relative_storage(tmp_path):
    proc, argv = _run_script("pipeline", ["cluster/configs/demo.yaml", "out/demo"], tmp_path)
    assert (proc.returncode, argv) == (2, None)
    assert "error: STORAGE_URI 'out/demo' is relative" in proc.stderr


@pytest.mark.parametrize("stage", sorted(WIRING))
def test_script_documents_its_ray_job_submit(stage):
    header = [line for line in (JOBS / f"{stage}.sh").read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "ray job submit" in text and "--working-dir ." in text
    assert f"bash cluster/jobs/{stage}.sh" in text


# ------------------------------------------------------------------------------------------ submit.py
FAKE = {name: f"value-of-{name.lower()}-7f3a" for name in S3_ENV_VARS}
FAKE["AWS_ENDPOINT_URL_S3"] = "https://admin:hunter2@s3.example.com"
UNRELATED = {"HOME": "/home/x", "GITHUB_TOKEN": "ghp_do_not_forward", "AWS_PROFILE": "dev"}


def test_forwarded_env_is_exactly_the_s3_settings():
    assert submit.forwarded_env({**FAKE, **UNRELATED}) == FAKE
    without = submit.forwarded_env({**FAKE, **UNRELATED}, with_keys=False)
    assert set(without) == set(FAKE) - set(submit.KEY_VARS)
    assert set(submit.KEY_VARS) <= set(S3_ENV_VARS)
    assert submit.forwarded_env({"AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-west-1"}) == {
        "AWS_DEFAULT_REGION": "eu-west-1"}


@pytest.mark.parametrize("stage", sorted(WIRING))
def test_build_job(stage):
    args = WIRING[stage][0]
    job = submit.build_job(stage, args, {**FAKE, **UNRELATED})
    assert job["entrypoint"] == " ".join(["bash", f"cluster/jobs/{stage}.sh", *args])
    assert job["runtime_env"]["working_dir"] == str(ROOT)
    assert job["runtime_env"]["env_vars"] == FAKE
    assert "entrypoint_num_cpus" not in job  # no --workers in these args


@pytest.mark.parametrize("stage,args,cpus", [
    ("world", ["/abs/w", "--workers", "6"], 6), ("benchmark", ["/abs/b", "--workers=3"], 3),
    ("world", ["/abs/w", "--workers", "0"], None), ("mine", ["/a", "/b", "--workers", "6"], None)])
def test_pool_stages_reserve_their_workers(stage, args, cpus):
    job = submit.build_job(stage, args, {})
    assert job.get("entrypoint_num_cpus") == cpus
    assert submit.build_job(stage, args, {}, entrypoint_num_cpus=2)["entrypoint_num_cpus"] == 2


def test_entrypoint_quotes_arguments():
    job = submit.build_job("mine", ["/abs/in put.tsv", "/abs/out;rm -rf x"], {})
    assert job["entrypoint"] == "bash cluster/jobs/mine.sh '/abs/in put.tsv' '/abs/out;rm -rf x'"


def _dry_run(*argv):
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV_VARS}
    env.update(FAKE)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, str(JOBS / "submit.py"), "--dry-run", *argv], cwd="/", env=env,
                          capture_output=True, text=True, timeout=60)


def test_dry_run_names_variables_and_never_shows_values():
    proc = _dry_run("--address", "http://user:pw-1234@head:8265", "mine", "s3://b/in.tsv", "s3://b/out")
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown
    # the values do travel: they are in the runtime env the job gets ...
    job = submit.build_job("mine", ["s3://b/in.tsv", "s3://b/out"], FAKE)
    assert set(job["runtime_env"]["env_vars"].values()) == set(FAKE.values())
    # ... but not one of them (nor the address's password) appears in what is printed
    for name, value in FAKE.items():
        assert f"{name}=***" in shown
        assert value not in shown, name
    assert "hunter2" not in shown and "pw-1234" not in shown
    assert "bash cluster/jobs/mine.sh s3://b/in.tsv s3://b/out" in shown
    assert f"working_dir: {ROOT}" in shown


def test_dry_run_without_keys():
    proc = _dry_run("--without-keys", "world", "/abs/w", "--workers", "4")
    assert proc.returncode == 0, proc.stderr
    for name in submit.KEY_VARS:
        assert name not in proc.stdout
    assert "AWS_REGION=***" in proc.stdout and "entrypoint_num_cpus: 4" in proc.stdout


def test_unknown_stage_and_abbreviated_option_are_refused():
    assert _dry_run("train").returncode == 2
    assert _dry_run("--without", "mine", "/a", "/b").returncode == 2


# -------------------------------------------------------------------------------- README "Cluster"
def test_readme_lists_a_ray_job_submit_per_stage():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- cluster-jobs:begin -->", "<!-- cluster-jobs:end -->"
    assert begin in readme and end in readme
    section = readme.split(begin, 1)[1].split(end, 1)[0]
    commands = [line for line in section.splitlines() if line.startswith("ray job submit")]
    assert all(not c.rstrip().endswith("\\") for c in commands)  # one copy-pasteable line each
    for stage in submit.STAGES:
        assert any(f"bash cluster/jobs/{stage}.sh" in c for c in commands), stage
