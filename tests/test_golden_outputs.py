"""Refactors must not change a byte: the world, the benchmark and the miner's data files are pinned.

`tests/data/golden_outputs.json` holds the sha256 of every data file of a small world, a benchmark built
against it, and the miner run on the world's captions (meta-noun dropping off, so the pin predates
that deliberate change; every attribute type kept, counts included, for the same reason).  Manifests, config.json and stats markers hold timings/versions and are not
pinned.  Regenerate (only for a deliberate output change, said in the commit):
    GENECIS_WRITE_GOLDEN=1 pytest tests/test_golden_outputs.py
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from miner.config import MinerConfig
from miner.pipeline import run as mine
from synthetic.benchmark import BenchmarkConfig, generate
from synthetic.world import WorldConfig, run_world

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GOLDEN = Path(__file__).parent / "data" / "golden_outputs.json"
NOT_PINNED = ("_world.json", "_benchmark.json", "_manifest.json", "config.json")
# URLs inside the files hold the output path, so the run always uses this one fixed local root.
FIXED_ROOT = Path("/tmp/genecis-golden-outputs")


def digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.name not in NOT_PINNED and "_stats/" not in rel:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _miner_config(**kw) -> MinerConfig:
    from miner.attributes import ATTRIBUTE_TYPES, UNTYPED

    fields = {f.name for f in dataclasses.fields(MinerConfig)}
    if "drop_meta_nouns" in fields:
        kw["drop_meta_nouns"] = False  # the pin predates the deliberate meta-noun change
    if "attribute_types" in fields:
        kw["attribute_types"] = ATTRIBUTE_TYPES + (UNTYPED,)  # ... and the one leaving counts out
    return MinerConfig(**kw)


def test_outputs_are_byte_identical_to_the_pinned_ones(ray_session):
    tmp_path = FIXED_ROOT
    shutil.rmtree(tmp_path, ignore_errors=True)
    run_world(WorldConfig(output=str(tmp_path / "world"), images=300, seed=5, shard_size=150, workers=1))
    generate(BenchmarkConfig(output=str(tmp_path / "bench"), templates=6, seed=6, workers=1,
                             avoid_world_scenes=300, world_seed=5))
    mine(_miner_config(input=str(tmp_path / "world" / "captions.tsv"), output=str(tmp_path / "mined"),
                       num_triplets=120, shard_bytes=12_000, triplets_per_shard=50, progress_interval_s=1.0))
    got = {name: digest_tree(tmp_path / name) for name in ("world", "bench", "mined")}
    if os.environ.get("GENECIS_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), f"{name}: different files"
        changed = [f for f in want[name] if got[name][f] != want[name][f]]
        assert not changed, f"{name}: {len(changed)} files changed, e.g. {changed[:5]}"
