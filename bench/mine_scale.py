"""Scale benchmark of the mining core on a synthetic CC3M-sized relation table.

Synthesises ~3.3M captions with ~2 relations each over a Zipf-like entity
vocabulary (names drawn from the real concreteness table plus unrated multi-word
heads), builds the PairIndex, mines change_object triplets with concreteness on
(GeneCIS: threshold 4.8, 6 look-ups) and prints wall time per phase and peak RSS.  With
``--similar-targets K`` it also mines them with reference-like targets (the best of K valid draws,
one caption per picture, features = the captions' entity names) and prints the time ratio to GeneCIS's draw
and the mean features reference and target share under each.

    .venv/bin/python bench/mine_scale.py [--captions N --triplets M] [--similar-targets 16 --no-pipeline]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from miner.concreteness import load_concreteness, score_strings  # noqa: E402
from miner.mining import MiningRule, build_pair_index, sample, split_of  # noqa: E402
from miner.similarity import ImageFeatures  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    print(f"{name:<22} {timings[name]:8.2f} s   peak RSS {peak_rss_mib():8.0f} MiB", flush=True)


def zipf_probs(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def entity_names(rng: np.random.Generator, n: int, table: dict[str, float]) -> list[str]:
    """Frequent ranks favour concrete rated words; rarer ranks are often unrated heads."""
    words = np.array(sorted(k for k in table if " " not in k))
    scores = np.array([table[w] for w in words])
    pick = rng.choice(len(words), size=n, replace=False, p=scores**6 / (scores**6).sum())
    p_miss = 0.1 + 0.4 * np.arange(n) / n  # multi-word heads such as "swimming pool area"
    miss = rng.random(n) < p_miss
    return [f"{w} area" if m else str(w) for w, m in zip(words[pick], miss)]


def synthesise(rng: np.random.Generator, captions: int, vocab: int):
    per_caption = rng.integers(1, 4, size=captions)  # 1..3 relations, mean 2
    image = np.repeat(np.arange(captions, dtype=np.int64), per_caption)
    n = len(image)
    subject = rng.choice(vocab, size=n, p=zipf_probs(vocab, 1.1)).astype(np.int32)
    object_rank = rng.choice(vocab, size=n, p=zipf_probs(vocab, 1.0))
    obj = rng.permutation(vocab).astype(np.int32)[object_rank]  # other popular entities
    return subject, obj, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=3_300_000)
    parser.add_argument("--triplets", type=int, default=1_600_000)
    parser.add_argument("--vocab", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the Ray mine stage on the table written as graphs/ Parquet")
    parser.add_argument("--shards", type=int, default=33, help="graph shards for --pipeline")
    parser.add_argument("--similar-targets", type=int, default=0, help="also mine with this many ranked target draws")
    args = parser.parse_args()
    timings: dict[str, float] = {}
    rng = np.random.default_rng(args.seed)
    rule = MiningRule()

    with phase("synthesise table", timings):
        table = load_concreteness()
        names = entity_names(rng, args.vocab, table)
        subject, obj, image = synthesise(rng, args.captions, args.vocab)
    print(f"  {len(image):,} relation rows, {args.captions:,} captions, {args.vocab:,} entities")

    with phase("concreteness scores", timings):
        scores = score_strings(names, table)
    print(f"  entities rated: {(scores >= 0).mean():.1%}, rated > 4.8: {(scores > 4.8).mean():.1%}")

    graphs_dir = None
    if args.pipeline:
        with phase("write graph table", timings):
            graphs_dir = write_graph_table(subject, obj, image, names, args.captions, args.shards)

    with phase("build index", timings):
        index = build_pair_index(subject, obj, image)
    features = None
    if args.similar_targets:
        with phase("image features", timings):
            features = ImageFeatures.build(np.arange(args.captions), np.arange(args.captions),
                                           [(image, subject), (image, obj)], args.vocab)
    del subject, obj, image

    ids = np.arange(args.triplets, dtype=np.int64)
    with phase("sample change_object", timings):
        got = sample("change_object", index, ids, seed=0, rule=rule,
                     subject_score=scores, object_score=scores)

    with phase("split check", timings):
        k = min(args.triplets, 40_000)
        halves = [sample("change_object", index, ids[a:b], 0, rule, scores, scores)
                  for a, b in ((0, k // 3), (k // 3, k))]
        same = np.array_equal(np.concatenate([h.target for h in halves]), got.target[:k])
        val = split_of(ids, args.triplets, rule.val_fraction)

    if features is not None:
        similar_with(index, ids, scores, features, got, args.similar_targets, timings)
    total_draws = int(got.draws.sum())
    print(f"  triplets ok: {got.ok.sum():,}/{len(got):,}, failed: {(~got.ok).sum():,}, "
          f"fallback: {got.fallback.sum():,}")
    print(f"  draws: {total_draws:,} total, mean {got.draws.mean():.1f}, max {got.draws.max()}, "
          f"concreteness acceptance per draw {got.ok.sum() / total_draws:.2%}")
    print(f"  split-invariant on first {k:,}: {same}; val/train: {val.sum():,}/{(~val).sum():,}")
    mining = timings["build index"] + timings["sample change_object"]
    print(f"index + sampling wall time: {mining:.1f} s; peak RSS {peak_rss_mib():.0f} MiB")
    del index, got
    if graphs_dir is not None:
        run_pipeline(graphs_dir, args.triplets)


def similar_with(index, ids, scores, features, got, k: int, timings: dict[str, float]) -> None:
    """Mine the same ids with ``similar_targets=k``: time ratio and shared features, GeneCIS vs ranked."""
    rule = MiningRule(similar_targets=k)
    with phase(f"sample similar K={k}", timings):
        sim = sample("change_object", index, ids, seed=0, rule=rule, subject_score=scores, object_score=scores,
                     image_features=features)

    def shared(s) -> float:
        ok = s.ok
        return float(features.shared(index.image[_pos(index, s.ref[ok])],
                                     index.image[_pos(index, s.target[ok])]).mean())
    ratio = timings[f"sample similar K={k}"] / timings["sample change_object"]
    print(f"  similar_targets={k}: {ratio:.2f}x GeneCIS's sampling time; features shared by reference and "
          f"target {shared(got):.2f} -> {shared(sim):.2f}; ok {sim.ok.sum():,}/{len(sim):,}")


def _pos(index, rows: np.ndarray) -> np.ndarray:
    """Input rows -> sorted positions of the index (``index.image`` is per sorted position)."""
    inverse = np.empty(index.n_rows, np.int64)
    inverse[index.order.astype(np.int64)] = np.arange(index.n_rows)
    return inverse[rows]


def write_graph_table(subject, obj, image, names, captions: int, shards: int) -> Path:
    """The synthetic relations as a real ``graphs/`` table (the miner's schema), in ``shards`` files."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from miner.graphs import GRAPH, GRAPH_SCHEMA, caption_id, shard_name

    out = Path(tempfile.mkdtemp(prefix="bench-mine-")) / "graphs"
    out.mkdir(parents=True)
    name_arr = pa.array(names, pa.string())
    n_rel = np.bincount(image, minlength=captions).astype(np.int64)
    rel_start = np.r_[0, np.cumsum(n_rel)]
    per_shard = -(-captions // shards)
    for k in range(shards):
        lo, hi = k * per_shard, min((k + 1) * per_shard, captions)
        a, b = rel_start[lo], rel_start[hi]
        local = np.arange(a, b) - np.repeat(rel_start[lo:hi], n_rel[lo:hi])  # relation index in its caption
        ent_names = pa.array(np.stack([subject[a:b], obj[a:b]], 1).ravel())
        entities = pa.StructArray.from_arrays(
            [name_arr.take(ent_names), pa.ListArray.from_arrays(pa.array(np.zeros(len(ent_names) + 1, np.int32)),
                                                                 pa.array([], pa.string()))],
            names=["name", "attributes"])
        relations = pa.StructArray.from_arrays(
            [pa.array(2 * local, pa.int32()), pa.array(["on"] * (b - a), pa.string()),
             pa.array(2 * local + 1, pa.int32())], names=["subject", "predicate", "object"])
        offs = (rel_start[lo:hi + 1] - a).astype(np.int32)
        graph = pa.StructArray.from_arrays(
            [pa.ListArray.from_arrays(pa.array(2 * offs), entities), pa.ListArray.from_arrays(pa.array(offs), relations)],
            fields=list(GRAPH))
        rows = np.arange(hi - lo)
        table = pa.table({"caption_id": pa.array([caption_id(k, int(r)) for r in rows], pa.int64()),
                          "key": pa.array([f"{k:05d}{r:07d}" for r in rows]),
                          "url": pa.array([f"https://img.example/{k}/{r}.jpg" for r in rows]),
                          "caption": pa.array(["synthetic"] * (hi - lo)), "graph": graph}, schema=GRAPH_SCHEMA)
        pq.write_table(table, out / f"{shard_name(k)}.parquet", compression="zstd")
    return out


def used_memory() -> int:
    """Bytes in use on the machine (MemTotal - MemAvailable): driver, Ray workers and object store."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


def run_pipeline(graphs_dir: Path, triplets: int) -> None:
    """The miner's Ray mine stage on the graph table: read -> explode -> group-by -> sample -> write."""
    import threading

    from cluster import storage
    from miner.config import MinerConfig
    from cluster.rayutil import init_ray
    from miner.pipeline import mine_stage

    cfg = MinerConfig(input=str(graphs_dir), output=str(graphs_dir.parent), kinds=("change_object",),
                      num_triplets=triplets, triplets_per_shard=200_000, progress_interval_s=10)
    base = used_memory()
    peak = [base]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], used_memory())

    threading.Thread(target=watch, daemon=True).start()
    init_ray(cfg.ray_address)
    shard_ids = sorted(int(p.stem.split("-")[1]) for p in graphs_dir.glob("part-*.parquet"))
    t0 = time.perf_counter()
    info = mine_stage(cfg, storage.resolve(cfg.output), storage.resolve(str(graphs_dir)), shard_ids)
    wall = time.perf_counter() - t0
    stop.set()
    written = sum(c["written"] for c in info["chunks"].values())
    print(f"Ray mine stage (graphs -> {written:,} triplets on disk): {wall:.1f} s "
          f"(goal < 300 s); machine memory peak +{(peak[0] - base) / 2**30:.2f} GiB over idle; "
          f"driver peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
