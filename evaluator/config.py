"""The evaluator's one typed config, which is also its CLI (``python -m evaluator genecis --help``)."""
from __future__ import annotations

from dataclasses import dataclass

from cluster.config import option, required, validate_fields
from evaluator.genecis_data import BenchmarkLayout
from trainer.heads import BASELINE_HEADS, COMBINER_HEADS, HEADS


class EvalConfigError(ValueError):
    """A config that names no data, an unknown head, or contradicting options."""


@dataclass(frozen=True)
class EvalConfig:
    """Score a model on GeneCIS (the official files or a procedural benchmark) with Ray."""

    model: str = required("open_clip model name, e.g. RN50x4, ViT-B-16, or tiny (random init)")
    output: str = required("output folder or s3:// prefix (results.json is written last)", uri=True)
    annotations: str | None = option(None, "folder/prefix holding {focus,change}_{attribute,object}.json; "
                                           "tasks whose file is absent are not scored", uri=True)
    coco_root: str | None = option(None, "COCO val2017 image folder ({id:012d}.jpg), local or s3://", uri=True)
    vg_root: str | None = option(None, "Visual Genome image folder ({image_id}.jpg), local or s3://", uri=True)
    benchmark: str | None = option(None, "a `python -m synthetic benchmark` output, in place of the three "
                                         "data flags", uri=True)
    pretrained: str | None = option(None, "open_clip pretrained tag or a local weights file")
    checkpoint: str | None = option(None, "a trainer run or checkpoint folder (its backbone, and its Combiner "
                                          "for the combiner head)", uri=True)
    heads: str = option(",".join(BASELINE_HEADS), f"comma-separated heads, of {','.join(HEADS)}")
    reference_weight: float = option(0.1, "w of the combiner_plus_image head: it ranks by Combiner similarity "
                                          "+ w x image-only similarity (late fusion)", min=0.0)
    skip_missing: bool = option(False, "count and skip templates whose image is missing or unreadable "
                                       "instead of failing")
    max_templates: int = option(0, "score only the first N templates of each task (0 = all)", min=0)
    cache: str | None = option(None, "embedding cache folder or s3:// prefix, keyed by (model fingerprint, "
                                     "image, crop box); a rerun or another head encodes nothing again",
                               runtime=True, uri=True)
    batch_size: int = option(64, "images (or texts) per encode batch", runtime=True, min=1)
    workers: int = option(0, "encode actors (0 = one per GPU, or as many as the CPUs allow)", runtime=True, min=0)
    cpus_per_worker: float = option(0.5, "CPUs per encode actor (<= 0.5 on a 2-CPU machine)", runtime=True,
                                    min=0.01)
    gpus_per_worker: float = option(-1.0, "GPUs per encode actor (-1 = 1 when the cluster has GPUs, else 0)",
                                    runtime=True, min=-1.0)
    ray_address: str | None = option(None, "Ray address (default: RAY_ADDRESS, else a local instance)",
                                     runtime=True)
    progress_interval_s: float = option(5.0, "seconds between progress lines", runtime=True, min=0.0)

    def __post_init__(self) -> None:
        data = (self.annotations, self.coco_root, self.vg_root)
        if self.benchmark and any(data):
            raise EvalConfigError("give --benchmark or --annotations/--coco-root/--vg-root, not both")
        if not self.benchmark and not all(data):
            raise EvalConfigError("give --benchmark URI, or all of --annotations, --coco-root and --vg-root")
        unknown = [h for h in self.head_list if h not in HEADS]
        if unknown or not self.head_list:
            raise EvalConfigError(f"unknown heads {unknown} in --heads {self.heads!r}; choose from {HEADS}")
        if self.needs_combiner and not self.checkpoint:
            raise EvalConfigError(f"heads {'/'.join(COMBINER_HEADS)} need --checkpoint (a trainer run or "
                                  "checkpoint with a Combiner)")
        if self.checkpoint and self.pretrained:
            raise EvalConfigError("--pretrained and --checkpoint are exclusive: the checkpoint holds the weights")
        validate_fields(self)

    @property
    def head_list(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h.strip() for h in self.heads.split(",") if h.strip()))

    @property
    def needs_combiner(self) -> bool:
        return any(h in COMBINER_HEADS for h in self.head_list)

    def layout(self) -> BenchmarkLayout:
        if self.benchmark:
            return BenchmarkLayout.synthetic(self.benchmark)
        return BenchmarkLayout(self.annotations, self.vg_root, self.coco_root)

