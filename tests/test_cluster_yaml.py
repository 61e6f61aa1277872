"""cluster/cluster.yaml (AWS) and cluster/local.yaml (on-prem): Ray's own schema, no credentials, the layout.

Validation is what ``ray up`` does before it launches anything: ``prepare_config`` (Ray's defaults merged
in; for the local provider, the fixed node type built from head_ip/worker_ips) and then
``validate_config`` (ray-schema.json through jsonschema, plus Ray's own cross-field checks).  Every check
has negative cases built by editing the real file's text, so each one is shown to fail on a bad file.
"""
from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Callable

import click
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
FILES = {"aws": ROOT / "cluster" / "cluster.yaml", "local": ROOT / "cluster" / "local.yaml"}


def text_of(kind: str) -> str:
    return FILES[kind].read_text()


# ------------------------------------------------------------------------------------------ the checks
def ray_validate(text: str) -> dict:
    """What `ray up` checks before launching: defaults merged, then Ray's schema and cross-field rules."""
    cfg = yaml.safe_load(text)
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


# Anywhere in the text, comments included (a commented-out key is one keystroke from being live).
RAW_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS key variable": re.compile(r"(?i)aws_secret_access_key|aws_access_key_id|aws_session_token"),
    "the word secret": re.compile(r"(?i)secret"),
    "a password": re.compile(r"(?i)passw(?:or)?d|\bpwd\b"),
    "user:password@ in a URL": re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/@:]+:[^\s/@]*@"),
    "a private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}
# Any mapping key of the parsed YAML (HttpTokens, the IMDSv2 switch, is not a credential).
KEY_PATTERN = re.compile(r"(?i)secret|passw|^token$|_token$|auth_?token|session_?token|access_?key"
                         r"|credential|private_?key|api_?key")


def _keys(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


def credential_findings(text: str) -> list[str]:
    found = [f"{what}: {m.group(0)!r}" for what, rx in RAW_PATTERNS.items() for m in rx.finditer(text)]
    found += [f"credential-like key {k!r}" for k in _keys(yaml.safe_load(text)) if KEY_PATTERN.search(k)]
    return found


_KEY_LINE = re.compile(r"^(\s*)(?:-\s+)?([A-Za-z_][\w.-]*):(?:\s|$)")
_BLOCK_SCALAR = re.compile(r":\s*[>|][-+]?\s*(?:#.*)?$")


def uncommented_keys(text: str) -> list[str]:
    """Keys with neither a comment on their line nor a comment line right above them."""
    missing, previous, block_indent = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:  # inside a folded/literal block: not YAML keys
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        match = _KEY_LINE.match(line)
        if match:
            if " #" not in line and not previous.startswith("#"):
                missing.append(f"line {number}: {match.group(2)}")
            if _BLOCK_SCALAR.search(line):
                block_indent = indent
        if stripped:
            previous = stripped
    return missing


def pinned_requirements(cfg: dict) -> dict[str, Requirement]:
    """Every `name==version` requirement that the setup commands pip-install."""
    pins = {}
    for command in cfg.get("setup_commands", []):
        words = shlex.split(command)
        if "pip" not in words or "install" not in words:
            continue
        for word in words[words.index("install") + 1:]:
            if not word.startswith("-"):
                req = Requirement(word)
                pins[req.name.lower().replace("_", "-")] = req
    return pins


def pin_problems(cfg: dict) -> list[str]:
    """The setup commands must pin every pyproject dependency exactly, within pyproject's range."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins, problems = pinned_requirements(cfg), []
    for dep in map(Requirement, project["dependencies"]):
        name = dep.name.lower().replace("_", "-")
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{dep.name} is not installed by the setup commands")
            continue
        spec = list(pin.specifier)
        if len(spec) != 1 or spec[0].operator != "==":
            problems.append(f"{pin} is not an exact pin")
        elif not dep.specifier.contains(spec[0].version, prereleases=True):
            problems.append(f"{pin} is outside pyproject's {dep}")
        if pin.extras != dep.extras:
            problems.append(f"{pin} has extras {sorted(pin.extras)}, pyproject {sorted(dep.extras)}")
    return problems


def _start_commands(cfg: dict) -> list[str]:
    return cfg.get("head_start_ray_commands", []) + cfg.get("worker_start_ray_commands", [])


def common_problems(cfg: dict) -> list[str]:
    problems = pin_problems(cfg)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        joined = " ".join(cfg.get(key, []))
        if "ulimit -n" not in joined:
            problems.append(f"{key} does not raise the open-file limit (ulimit -n)")
        if "RAY_AUTH_MODE=disabled" not in joined:
            problems.append(f"{key} does not fix RAY_AUTH_MODE (the project's one value: disabled)")
    return problems


def aws_problems(cfg: dict) -> list[str]:
    problems = common_problems(cfg)
    types = cfg.get("available_node_types", {})
    head = types.get(cfg.get("head_node_type"), {})
    if head.get("resources", {}).get("CPU") != 0:
        problems.append("the head advertises CPUs (it must run no tasks: resources {CPU: 0})")
    pools = {name: t for name, t in types.items() if name != cfg.get("head_node_type")}
    spot_cpu = [n for n, t in pools.items() if not t.get("resources", {}).get("GPU")
                and t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    gpu = [n for n, t in pools.items() if t.get("resources", {}).get("GPU", 0) > 0]
    if not spot_cpu:
        problems.append("no CPU pool on spot instances")
    if not gpu:
        problems.append("no GPU pool")
    for name, t in types.items():
        node = t.get("node_config", {})
        if not node.get("IamInstanceProfile"):
            problems.append(f"{name}: no IamInstanceProfile (the only allowed source of AWS access)")
        if node.get("MetadataOptions", {}).get("HttpTokens") != "required":
            problems.append(f"{name}: IMDSv2 not required")
    for name, t in pools.items():
        if not 0 <= t.get("min_workers", 0) <= t.get("max_workers", -1):
            problems.append(f"{name}: autoscaling limits missing or inverted")
    if sum(t.get("max_workers", 0) for t in pools.values()) > cfg.get("max_workers", 0):
        problems.append("the pools' max_workers exceed the global max_workers")
    ray_pin = pinned_requirements(cfg).get("ray")
    images = [cfg.get("docker", {}).get("image", "")] + [t.get("docker", {}).get("worker_image", "")
                                                        for t in types.values() if t.get("docker")]
    for image in images:
        if ray_pin is None or f":{next(iter(ray_pin.specifier)).version}-py311" not in image:
            problems.append(f"docker image {image!r} is not Ray {ray_pin} on Python 3.11")
    return problems


def local_problems(cfg: dict) -> list[str]:
    problems = common_problems(cfg)
    provider = cfg.get("provider", {})
    if provider.get("type") != "local" or not provider.get("head_ip") or not provider.get("worker_ips"):
        problems.append("not a local provider with head_ip and worker_ips")
    return problems


STRUCTURE = {"aws": aws_problems, "local": local_problems}


# --------------------------------------------------------------------------------- the real files pass
@pytest.mark.parametrize("kind", sorted(FILES))
def test_valid_for_ray_up(kind):
    prepared = ray_validate(text_of(kind))
    assert prepared["cluster_name"].startswith("genecis-ray")
    if kind == "aws":
        assert set(prepared["available_node_types"]) == {"head", "cpu_pool", "gpu_pool"}
    else:
        node = prepared["available_node_types"]["local.cluster.node"]
        assert node["min_workers"] == node["max_workers"] == len(yaml.safe_load(text_of(kind))["provider"]["worker_ips"])


@pytest.mark.parametrize("kind", sorted(FILES))
def test_no_credentials(kind):
    assert credential_findings(text_of(kind)) == []


@pytest.mark.parametrize("kind", sorted(FILES))
def test_every_key_commented(kind):
    assert uncommented_keys(text_of(kind)) == []


@pytest.mark.parametrize("kind", sorted(FILES))
def test_layout(kind):
    assert STRUCTURE[kind](yaml.safe_load(text_of(kind))) == []


def test_same_pins_in_both():
    aws, local = (pinned_requirements(yaml.safe_load(text_of(k))) for k in ("aws", "local"))
    assert {k: str(v) for k, v in aws.items()} == {k: str(v) for k, v in local.items()}


# ------------------------------------------------------------------------ ... and broken copies fail
def _after(anchor: str, insert: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert anchor in text, anchor
        return text.replace(anchor, anchor + insert, 1)
    return edit


def _sub(pattern: str, repl: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        new, n = re.subn(pattern, repl, text, count=1, flags=re.M)
        assert n == 1, pattern
        return new
    return edit


def _append(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


CREDENTIAL_CASES = {
    "key id in a comment": _append("# AKIAIOSFODNN7EXAMPLE\n"),
    "key in provider": _after("provider:\n", "  aws_secret_access_key: abc123\n"),
    "key exported in a command": _append("initialization_commands:\n  - export AWS_SECRET_ACCESS_KEY=abc\n"),
    "endpoint with user:pass": _append("initialization_commands:\n  - curl https://admin:hunter2@s3.example.com/\n"),
    "password in metadata": _append("metadata:\n  db_password: x\n"),
    "token in metadata": _append("metadata:\n  auth_token: x\n"),
    "ssh private key": _after("auth:\n", "  ssh_private_key: ~/.ssh/id_rsa\n"),
}


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("case", sorted(CREDENTIAL_CASES))
def test_credential_check_fails_on_injected(kind, case):
    assert credential_findings(CREDENTIAL_CASES[case](text_of(kind)))


SCHEMA_CASES = [  # (file, case, edit, exception Ray raises)
    ("aws", "misspelled top-level key", _append("max_worker: 3\n"), jsonschema.ValidationError),
    ("local", "misspelled top-level key", _append("idle_timeout: 3\n"), jsonschema.ValidationError),
    ("aws", "wrong type", _sub(r"^idle_timeout_minutes: \d+", "idle_timeout_minutes: soon"),
     jsonschema.ValidationError),
    ("local", "wrong type", _sub(r"^idle_timeout_minutes: \d+", "idle_timeout_minutes: soon"),
     jsonschema.ValidationError),
    ("aws", "unknown node-type key", _sub(r"^    min_workers: 0\n    # At most 32",
                                          "    min_worker: 0\n    # At most 32"), jsonschema.ValidationError),
    ("aws", "negative resource", _sub(r"resources: \{CPU: 32\}", "resources: {CPU: -32}"),
     jsonschema.ValidationError),
    ("aws", "unknown docker key", _after("  pull_before_run: true\n", "  pull: always\n"),
     jsonschema.ValidationError),
    ("aws", "head type not defined", _sub(r"^head_node_type: head$", "head_node_type: ray.head"), ValueError),
    ("local", "no worker_ips", _sub(r"^  worker_ips:\n(    - .*\n)+", ""), click.ClickException),
]


@pytest.mark.parametrize("kind,case,edit,error", SCHEMA_CASES, ids=[f"{k}-{c}" for k, c, _, _ in SCHEMA_CASES])
def test_schema_check_fails_on_invalid(kind, case, edit, error):
    with pytest.raises(error):
        ray_validate(edit(text_of(kind)))


def test_comment_check_fails_on_uncommented_key():
    text = _after("  cache_stopped_nodes: false\n", "  use_internal_ips: false\n")(text_of("aws"))
    assert uncommented_keys(text) == [f"line {text.splitlines().index('  use_internal_ips: false') + 1}: "
                                      "use_internal_ips"]


LAYOUT_CASES = [  # (file, case, edit of the parsed config, expected problem)
    ("aws", "head runs tasks", lambda c: c["available_node_types"]["head"].update(resources={"CPU": 8}),
     "the head advertises CPUs"),
    ("aws", "no spot pool", lambda c: c["available_node_types"]["cpu_pool"]["node_config"].pop(
        "InstanceMarketOptions"), "no CPU pool on spot"),
    ("aws", "no GPU pool", lambda c: c["available_node_types"]["gpu_pool"].update(resources={"CPU": 48}),
     "no GPU pool"),
    ("aws", "no instance profile", lambda c: c["available_node_types"]["gpu_pool"]["node_config"].pop(
        "IamInstanceProfile"), "gpu_pool: no IamInstanceProfile"),
    ("aws", "pools beyond the global limit", lambda c: c.update(max_workers=8), "exceed the global"),
    ("aws", "image of another Ray", lambda c: c["docker"].update(image="rayproject/ray:2.9.0-py311-cpu"),
     "is not Ray"),
    ("aws", "no ulimit", lambda c: c.update(worker_start_ray_commands=["ray stop", "ray start --address=h:6379"]),
     "ulimit -n"),
    ("local", "no ulimit", lambda c: c.update(head_start_ray_commands=["ray start --head"]), "ulimit -n"),
    ("aws", "torch pin drifted", lambda c: c.update(setup_commands=[
        c["setup_commands"][0].replace('"torch==2.14.1"', '"torch==2.0.0"')]), "outside pyproject"),
    ("local", "package not pinned", lambda c: c.update(setup_commands=[
        s.replace(' "pyyaml==6.0.4"', "") for s in c["setup_commands"]]), "pyyaml is not installed"),
    ("local", "range instead of pin", lambda c: c.update(setup_commands=[
        s.replace('"numpy==2.4.6"', '"numpy>=1.26"') for s in c["setup_commands"]]), "not an exact pin"),
    ("local", "extras dropped", lambda c: c.update(setup_commands=[
        s.replace('"ray[default,data,train]==2.60.0"', '"ray==2.60.0"') for s in c["setup_commands"]]),
     "has extras"),
]


@pytest.mark.parametrize("kind,case,edit,expected", LAYOUT_CASES, ids=[f"{k}-{c}" for k, c, _, _ in LAYOUT_CASES])
def test_layout_check_fails_on_broken(kind, case, edit, expected):
    cfg = yaml.safe_load(text_of(kind))
    edit(cfg)
    problems = STRUCTURE[kind](cfg)
    assert any(expected in p for p in problems), problems
