"""The synthetic world and benchmark on real S3 (radosgw), read back by the miner and the GeneCIS loader."""
from __future__ import annotations

import json

import pyarrow.dataset as pads
import pytest

from cluster import storage
from evaluator.genecis_data import BenchmarkLayout
from miner.config import MinerConfig
from miner.pipeline import run as mine
from synthetic.benchmark import BenchmarkConfig, generate, verify_benchmark
from synthetic.render import render_scene
from synthetic.scene import Scene
from synthetic.world import WorldConfig, iter_webdataset, load_image, run_world

pytestmark = [pytest.mark.s3, pytest.mark.ray, pytest.mark.slow]


def _same_image(a, b, tol: float = 12.0) -> bool:
    import numpy as np

    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()) < tol


def test_world_on_s3_is_mined_and_its_urls_resolve(ray_session, s3_bucket):
    world = WorldConfig(output=f"{s3_bucket}/world", images=600, seed=3, shard_size=200)
    manifest = run_world(world)
    assert manifest["counts"]["images"] == 600
    first = next(iter_webdataset(f"{s3_bucket}/world/shards"))
    scene = Scene.from_json(first["json"]["scene"])
    assert _same_image(load_image(first["json"]["url"]), render_scene(scene))
    assert first["json"]["url"].startswith(f"{s3_bucket}/world/images/")

    out = f"{s3_bucket}/mined"
    mined = mine(MinerConfig(input=f"{s3_bucket}/world/captions.tsv", output=out, num_triplets=200,
                             shard_bytes=20_000, triplets_per_shard=100, progress_interval_s=1.0))
    counts = mined["counts"]
    assert counts["read"] == 1200 and counts["skipped_total"] == 0
    for kind in ("change_object", "change_attribute", "focus_attribute", "focus_object"):
        assert sum(counts["triplets"][kind].values()) > 150, (kind, mined["kinds"].get(kind))
    loc = storage.resolve(out)
    files = [f.path for f in storage.list_files(loc.child("triplets"), ".parquet")]
    triplets = pads.dataset(files, filesystem=loc.fs, format="parquet").to_table().to_pylist()
    shapes = {"circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond", "hexagon",
              "pentagon", "crescent", "arrow"}
    co = [t for t in triplets if t["kind"] == "change_object"]
    assert sum(t["subject"] in shapes for t in co) > 0.9 * len(co)
    for t in triplets[:20]:  # every URL the miner wrote fetches the stored image
        for role in ("ref", "target", "distractor"):
            assert load_image(t[f"{role}_url"]).size == (world.image_size, world.image_size)


def test_parquet_index_is_a_miner_input(ray_session, s3_bucket):
    run_world(WorldConfig(output=f"{s3_bucket}/w", images=200, seed=4, shard_size=100))
    mined = mine(MinerConfig(input=f"{s3_bucket}/w/index", output=f"{s3_bucket}/m", format="parquet",
                             num_triplets=50, kinds=("change_attribute",), progress_interval_s=1.0))
    assert mined["counts"]["read"] == 400 and mined["counts"]["parsed"] == 400


def test_benchmark_on_s3_through_the_genecis_loader(services, s3_bucket):
    root = f"{s3_bucket}/bench"
    manifest = generate(BenchmarkConfig(output=root, templates=8, seed=1, workers=1))
    proof = verify_benchmark(root)  # re-runs the validity proof from the files on S3
    assert {task: v["templates"] for task, v in proof.items()} == {
        "focus_attribute": 8, "change_attribute": 8, "focus_object": 8, "change_object": 8}
    layout = BenchmarkLayout.synthetic(root)
    for task, gallery in (("focus_attribute", 10), ("change_attribute", 15), ("focus_object", 15),
                          ("change_object", 15)):
        templates = layout.load(task)
        assert len(templates) == 8 and all(len(t.candidates) == gallery for t in templates)
        img = layout.image(templates[0].reference)
        assert img.size[0] == img.size[1]  # attribute crops are padded square; scenes are square
    assert json.dumps(manifest)  # the manifest is plain JSON
