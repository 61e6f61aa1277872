"""Typed configs of the two trainer commands (each is also its CLI through cluster.config).

Every field defines the run's output unless it is declared ``runtime=True``: a resume
(the same command again) may change a runtime field, and :func:`cluster.config.pin_config` refuses a
resume that changes any other.  The runtime fields and why:

* ``num_workers``, ``use_gpu``, ``cpus_per_worker`` — where the run executes.  ``--batch-size`` is the
  **global** batch and every rank scores its rows against the targets gathered from all ranks (with
  gradient), so the loss and the update are those of the global batch whatever the worker count: a
  resume on 4 workers optimises the same objective as the run on 2.  What changes is floating-point
  rounding, the dropout masks (seeded per step *and rank*) and which rank holds which row (Ray Data's
  split is not fixed between attempts anyway), i.e. nothing the run's definition names.
* ``data_concurrency``, ``data_cpus``, ``data_batch`` — the decode/lookup actor pool and its batch size
  (rows are planned and resumed by position, not by block).
* ``checkpoint_every``, ``keep_checkpoints``, ``max_failures``, ``progress_s`` — bookkeeping.
* ``max_skip_fraction`` — decides whether a run stops, never what it trains: the row plan is the same
  endless seeded sequence whatever the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cluster.config import ConfigError, option, required, validate_fields

from trainer.model import FINETUNE_MODES
from trainer.negatives import parse_groups
from trainer.optim import PRECISIONS, OptimSettings, autocast_dtype

# Triplet kinds whose reference lacks the condition by the mining rule (the target adds or changes it).
REFERENCE_NEGATIVE_KINDS = ("change_object", "change_attribute")


def _required_after_defaults(help: str):
    """A required ``--flag`` URI in a subclass (a dataclass field after defaulted ones needs a default)."""
    return option("", help, required=True, uri=True)


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by ``clip`` and ``combiner``."""

    storage_path: str = required("Ray Train storage path: local folder or s3://bucket/prefix", uri=True)
    name: str = required("run name; the run lives in {storage-path}/{name}")
    model: str = option("tiny", "open_clip model name (tiny = the project's CPU config)")
    pretrained: str | None = option(None, "open_clip pretrained tag or local weights file (none: random init)")
    num_workers: int = option(1, "Ray Train workers (the global batch is split over them)", runtime=True, min=1)
    use_gpu: bool = option(False, "one GPU per worker", runtime=True)
    cpus_per_worker: float = option(0.5, "CPUs reserved per training worker (0.5 leaves room for Ray Data on "
                                    "2 CPUs)", runtime=True, min=0.0)
    max_steps: int = option(1000, "optimisation steps of the whole run", min=1)
    batch_size: int = option(64, "GLOBAL batch size (split evenly over workers)", min=1)
    precision: str = option("auto", "auto = bf16 autocast on GPU, fp32 on CPU; bf16 = bf16 autocast on either; "
                             "fp16 = fp16 + GradScaler (GPU only)", choices=PRECISIONS)
    lr: float = option(1e-6, "AdamW learning rate", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    beta1: float = option(0.9, "AdamW beta1", min=0.0, max=1.0)
    beta2: float = option(0.999, "AdamW beta2", min=0.0, max=1.0)
    eps: float = option(1e-8, "AdamW eps", min=0.0)
    warmup_steps: int = option(0, "linear warm-up steps before the cosine schedule", min=0)
    min_lr: float = option(1e-9, "cosine floor", min=0.0)
    grad_clip: float = option(1.0, "clip the (unscaled) gradient norm of all trainable parameters; 0 = off",
                              min=0.0)
    checkpoint_every: int = option(100, "checkpoint every N steps (and at the last step)", runtime=True, min=1)
    keep_checkpoints: int = option(3, "checkpoints kept in storage", runtime=True, min=1)
    max_failures: int = option(2, "worker-group restarts from the last checkpoint before the run fails",
                               runtime=True, min=0)
    crop_scale: float = option(0.9, "smallest area fraction of the training RandomResizedCrop (open_clip's "
                               "and GeneCIS's 0.9; smaller also teaches the objects at larger scales)",
                               min=0.01, max=1.0)
    seed: int = option(0, "seed of model init, data order, augmentation and dropout", min=0)
    max_skip_fraction: float = option(0.05, "fail when more than this fraction of rows is skipped",
                                      runtime=True, min=0.0, max=0.999)
    data_concurrency: int = option(1, "decode (or feature lookup) actors (Ray Data map_batches)", runtime=True,
                                   min=1)
    data_cpus: float = option(0.5, "CPUs per decode actor", runtime=True, min=0.0)
    data_batch: int = option(64, "rows per decode batch", runtime=True, min=1)
    progress_s: float = option(5.0, "seconds between progress lines", runtime=True, min=0.1)

    def __post_init__(self) -> None:
        validate_fields(self)  # min/max/choices hold for configs built in code too, as for the CLI
        try:  # the precision rule lives in autocast_dtype; here it fails before anything starts
            autocast_dtype(self.precision, torch.device("cuda" if self.use_gpu else "cpu"))
        except ValueError:
            raise ConfigError(f"--precision {self.precision} needs --use-gpu (its GradScaler is CUDA's); use "
                              "bf16 or fp32 on CPU") from None
        if self.batch_size % self.num_workers:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of --num-workers "
                             f"{self.num_workers}")

    def optim(self) -> OptimSettings:
        return OptimSettings(lr=self.lr, weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2,
                             eps=self.eps, warmup_steps=self.warmup_steps, min_lr=self.min_lr,
                             grad_clip=self.grad_clip, max_steps=self.max_steps)

    def image_root(self) -> str:
        return self.images


@dataclass(frozen=True)
class ClipConfig(TrainConfig):
    """CLIP image-caption contrastive pretraining (symmetric loss, learnable temperature)."""

    captions: str = _required_after_defaults("the world's root, its index/, or a Parquet folder with key, "
                                             "caption[, url]")
    images: str | None = option(None, "image root with webdataset tars (default: --captions)", uri=True)
    temperature: float = option(0.07, "initial temperature (learnable; CLIP's 0.07)", min=1e-4, max=0.999)
    lr: float = option(5e-4, "AdamW learning rate", min=0.0)
    weight_decay: float = option(0.1, "AdamW weight decay", min=0.0)
    beta2: float = option(0.98, "AdamW beta2", min=0.0, max=1.0)
    eps: float = option(1e-6, "AdamW eps", min=0.0)
    swap_negatives: tuple[str, ...] = option(
        (), "groups of interchangeable words, each 'w1,w2,...' (e.g. the corpus's object nouns): every "
            "caption with a group word also gives a hard negative caption, that word swapped for another of "
            "its group, scored against the image (NegCLIP-style; trainer/negatives.py)")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_groups(self.swap_negatives)
        except ValueError as err:
            raise ConfigError(f"--swap-negatives: {err}") from None

    def image_root(self) -> str:
        return self.images or self.captions


@dataclass(frozen=True)
class CombinerConfig(TrainConfig):
    """GeneCIS Combiner training on mined triplets (InfoNCE query -> target, global-batch negatives)."""

    triplets: str = _required_after_defaults("a folder of the miner's triplet Parquet (e.g. OUT/triplets/train)")
    images: str = _required_after_defaults("the world's root or an img2dataset folder (webdataset tars)")
    backbone: str | None = option(None, "a clip run folder (its latest checkpoint) or a checkpoint folder "
                                  "(default: --model/--pretrained)", uri=True)
    finetune: str = option("whole", "trainable backbone part", choices=FINETUNE_MODES)
    feature_cache: bool = option(True, "with --finetune frozen: encode each distinct image (eval transform) "
                                 "and condition once into {run}/data/features and train the Combiner on them; "
                                 "false: decode, augment and encode every step, as GeneCIS does")
    projection_dim: int = option(2560, "Combiner projection P", min=1)
    hidden_dim: int | None = option(None, "Combiner hidden H (default 2P)", min=1)
    dropout: float = option(0.5, "Combiner dropout", min=0.0, max=0.999)
    temperature: float = option(0.01, "InfoNCE temperature (GeneCIS: 0.01)", min=1e-4, max=0.999)
    learn_temperature: bool = option(False, "learn the temperature")
    symmetric: bool = option(False, "add the target -> query direction")
    distractor_negatives: bool = option(False, "use the mined distractor as an extra hard negative "
                                        "(GeneCIS encodes it but never uses it)")
    reference_negatives: tuple[str, ...] = option(
        (), "triplet kinds whose reference image is one more negative of its own query (e.g. change_object "
            "change_attribute: the reference lacks the condition by the mining rule, so it is the picture the "
            "query must not return; a focus kind's reference shows its condition, so only change kinds)")
    combiner_lr: float | None = option(None, "Combiner learning rate (default: --lr, one group as GeneCIS)",
                                       min=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [k for k in self.reference_negatives if k not in REFERENCE_NEGATIVE_KINDS]
        if bad:
            raise ConfigError(f"--reference-negatives: {bad} not in {REFERENCE_NEGATIVE_KINDS} (a focus kind's "
                              "reference shows its condition: it is not a negative)")
        if self.backbone and self.pretrained:
            raise ValueError("give --backbone or --pretrained, not both")

    def cached_features(self) -> bool:
        """Train on features encoded once (frozen backbone with the feature cache on)."""
        return self.finetune == "frozen" and self.feature_cache
