"""Typed configs of the two trainer commands (each is also its CLI through cluster.config)."""
from __future__ import annotations

from dataclasses import dataclass

from cluster.config import option

from trainer.model import FINETUNE_MODES
from trainer.optim import PRECISIONS, OptimSettings


def required(help: str):
    return option("", help, required=True)


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by ``clip`` and ``combiner``."""

    storage_path: str = required("Ray Train storage path: local folder or s3://bucket/prefix")
    name: str = required("run name; the run lives in {storage-path}/{name}")
    model: str = option("tiny", "open_clip model name (tiny = the project's CPU config)")
    pretrained: str | None = option(None, "open_clip pretrained tag or local weights file (none: random init)")
    num_workers: int = option(1, "Ray Train workers")
    use_gpu: bool = option(False, "one GPU per worker")
    cpus_per_worker: float = option(0.5, "CPUs reserved per training worker (0.5 leaves room for Ray Data on 2 CPUs)")
    max_steps: int = option(1000, "optimisation steps of the whole run")
    batch_size: int = option(64, "GLOBAL batch size (split evenly over workers)")
    precision: str = option("auto", "auto = bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    lr: float = option(1e-6, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.999, "AdamW beta2")
    eps: float = option(1e-8, "AdamW eps")
    warmup_steps: int = option(0, "linear warm-up steps before the cosine schedule")
    min_lr: float = option(1e-9, "cosine floor")
    grad_clip: float = option(1.0, "clip the (unscaled) gradient norm of all trainable parameters; 0 = off")
    checkpoint_every: int = option(100, "checkpoint every N steps (and at the last step)")
    keep_checkpoints: int = option(3, "checkpoints kept in storage")
    max_failures: int = option(2, "worker-group restarts from the last checkpoint before the run fails")
    seed: int = option(0, "seed of model init, data order and augmentation")
    max_skip_fraction: float = option(0.05, "fail when more than this fraction of rows is skipped")
    data_concurrency: int = option(1, "decode actors (Ray Data map_batches)")
    data_cpus: float = option(0.5, "CPUs per decode actor")
    data_batch: int = option(64, "rows per decode batch")
    progress_s: float = option(5.0, "seconds between progress lines")

    def optim(self) -> OptimSettings:
        return OptimSettings(lr=self.lr, weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2,
                             eps=self.eps, warmup_steps=self.warmup_steps, min_lr=self.min_lr,
                             grad_clip=self.grad_clip, max_steps=self.max_steps)

    def validate(self) -> None:
        if self.num_workers < 1 or self.batch_size % self.num_workers:
            raise ValueError(f"--batch-size {self.batch_size} must be a positive multiple of "
                             f"--num-workers {self.num_workers}")
        if self.max_steps < 1 or self.checkpoint_every < 1:
            raise ValueError("--max-steps and --checkpoint-every must be >= 1")
        if not 0 <= self.max_skip_fraction < 1:
            raise ValueError("--max-skip-fraction must be in [0, 1)")


@dataclass(frozen=True)
class ClipConfig(TrainConfig):
    """CLIP image-caption contrastive pretraining (symmetric loss, learnable temperature)."""

    captions: str = required("the world's root, its index/, or a Parquet folder with key, caption[, url]")
    images: str | None = option(None, "image root with webdataset tars (default: --captions)")
    temperature: float = option(0.07, "initial temperature (learnable; CLIP's 0.07)")
    lr: float = option(5e-4, "AdamW learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay")
    beta2: float = option(0.98, "AdamW beta2")
    eps: float = option(1e-6, "AdamW eps")


@dataclass(frozen=True)
class CombinerConfig(TrainConfig):
    """GeneCIS Combiner training on mined triplets (InfoNCE query -> target, global-batch negatives)."""

    triplets: str = required("a folder of the miner's triplet Parquet (e.g. OUT/triplets/train)")
    images: str = required("the world's root or an img2dataset folder (webdataset tars)")
    backbone: str | None = option(None, "a clip run folder or checkpoint folder (default: --model/--pretrained)")
    finetune: str = option("whole", "trainable backbone part", choices=FINETUNE_MODES)
    projection_dim: int = option(2560, "Combiner projection P")
    hidden_dim: int | None = option(None, "Combiner hidden H (default 2P)")
    dropout: float = option(0.5, "Combiner dropout")
    temperature: float = option(0.01, "InfoNCE temperature (GeneCIS: 0.01)")
    learn_temperature: bool = option(False, "learn the temperature")
    symmetric: bool = option(False, "add the target -> query direction")
    distractor_negatives: bool = option(False, "use the mined distractor as an extra hard negative "
                                        "(GeneCIS encodes it but never uses it)")
    combiner_lr: float | None = option(None, "Combiner learning rate (default: --lr, one group as GeneCIS)")

    def validate(self) -> None:
        super().validate()
        if self.backbone and self.pretrained:
            raise ValueError("give --backbone or --pretrained, not both")


# Fields that may change between a run and its resume; every other field defines the run's output.
RUNTIME_FIELDS = ("num_workers", "use_gpu", "cpus_per_worker", "max_failures", "data_concurrency", "data_cpus",
                  "data_batch", "progress_s", "checkpoint_every", "keep_checkpoints")
