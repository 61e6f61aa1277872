"""Evaluator encodes and wall time: ours (each distinct image/crop and text once, all heads scored from the
embedding tables) vs a per-template loop (the released code's way: for every head, every template encodes
its reference, its condition and all of its candidates), on the same templates, model and images.

The templates are the official object files (``../shared/genecis/annotations``, 62,720 image slots over
3,033 distinct COCO images) cut to ``--max-templates`` per task; each referenced image gets a seeded noise
stand-in (the COCO images cannot be downloaded here).  Both sides use the same reader, preprocessing, model
and ``trainer.model.combine``, so their target ranks must agree (checked).  Ours runs on Ray by default
(actor start-up included), or in this process with ``--in-process``.

    .venv/bin/python bench/eval_encodes.py [--max-templates 100] [--heads image_only,text_only,image_plus_text]
                                           [--model tiny] [--image-size 320x240] [--in-process]

Goal (issue 8): >= 10x fewer encodes than the per-template loop, and a faster wall time.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OFFICIAL = ROOT.parent / "shared" / "genecis" / "annotations"


def stand_in_images(templates: dict, coco: Path, size: tuple[int, int]) -> int:
    """One seeded noise JPEG per referenced COCO id (blurred blocks, so JPEG sizes are photo-like)."""
    from PIL import Image

    coco.mkdir(parents=True, exist_ok=True)
    ids = {it.image_id for tpls in templates.values() for t in tpls for it in (t.reference, *t.candidates)}
    for i in ids:
        rng = np.random.default_rng(int(i))
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(coco / f"{int(i):012d}.jpg", quality=90)
    return len(ids)


def per_template_loop(templates: dict, heads: list[str], model, reader) -> tuple[dict, int, int]:
    """Released-code style: per head, per template, encode ref + condition + every candidate.

    Returns ({head: {task: ranks}}, image encodes, text encodes)."""
    import torch

    from evaluator.encode import Encoder
    from evaluator.metrics import target_ranks
    from trainer.model import combine

    enc = Encoder(model.backbone)
    ranks: dict = {}
    n_img = n_txt = 0
    for head in heads:
        ranks[head] = {}
        for task, tpls in templates.items():
            out = []
            for t in tpls:
                ref = enc.images([reader.image(t.reference)])
                txt = enc.texts([t.condition])
                cand = enc.images([reader.image(c) for c in t.candidates])
                n_img, n_txt = n_img + 1 + len(t.candidates), n_txt + 1
                with torch.inference_mode():
                    q = combine(head, torch.from_numpy(ref), torch.from_numpy(txt), model.combiner).numpy()[0]
                unit = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
                out.append(target_ranks((unit @ q)[None, :])[0])
            ranks[head][task] = np.asarray(out)
    return ranks, n_img, n_txt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default=str(OFFICIAL))
    ap.add_argument("--max-templates", type=int, default=100, help="templates per task (0 = all)")
    ap.add_argument("--heads", default="image_only,text_only,image_plus_text")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--image-size", default="320x240", help="stand-in image size WxH")
    ap.add_argument("--in-process", action="store_true", help="run ours without Ray")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from evaluator.config import EvalConfig
    from evaluator.encode import ImageReader, ModelSpec, load_model
    from evaluator.genecis import run
    from evaluator.protocol import discover_tasks, load_tasks

    heads = args.heads.split(",")
    files, _ = discover_tasks(args.annotations)
    templates = {t: td.templates for t, td in load_tasks(files, args.max_templates).items()}
    base = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        w, h = (int(v) for v in args.image_size.split("x"))
        distinct = stand_in_images(templates, base / "coco", (w, h))
        print(f"{sum(len(v) for v in templates.values()):,} templates ({', '.join(templates)}), "
              f"{distinct:,} distinct stand-in images {w}x{h}, model {args.model}, heads {args.heads}")
        cfg = EvalConfig(model=args.model, output=str(base / "out"), annotations=args.annotations,
                         coco_root=str(base / "coco"), vg_root=str(base / "vg"), heads=args.heads,
                         max_templates=args.max_templates)
        t0 = time.monotonic()
        ours = run(cfg, in_process=args.in_process)
        t_ours = time.monotonic() - t0
        t0 = time.monotonic()
        model = load_model(ModelSpec(args.model))
        loop_ranks, loop_img, loop_txt = per_template_loop(templates, heads, model,
                                                           ImageReader(str(base / "vg"), str(base / "coco")))
        t_loop = time.monotonic() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ours_enc = ours["encodes"]["images"]["encoded"] + ours["encodes"]["texts"]["encoded"]
    loop_enc = loop_img + loop_txt
    from evaluator.metrics import recall_at_k

    agree = all(abs(100 * recall_at_k(loop_ranks[hd][t])[k] - ours["heads"][hd][t][f"r{k}"]) < 1e-6
                for hd in heads for t in templates for k in (1, 2, 3))
    where = "in-process" if args.in_process else "Ray"
    print(f"ours ({where}): {ours['encodes']['images']['encoded']:,} image + {ours['encodes']['texts']['encoded']:,} "
          f"text encodes, {t_ours:.1f} s wall (encode stage {ours['timings']['encode_s']:.1f} s)")
    print(f"per-template loop: {loop_img:,} image + {loop_txt:,} text encodes, {t_loop:.1f} s wall")
    print(f"ratio: {loop_enc / max(ours_enc, 1):.1f}x fewer encodes, {t_loop / t_ours:.2f}x faster wall time; "
          f"same R@1/2/3 on every head and task: {agree}")
    met = loop_enc >= 10 * ours_enc and t_ours < t_loop
    print(f"goal >= 10x fewer encodes and faster: {'met' if met else 'NOT met'}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
