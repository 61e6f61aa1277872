"""The miner's typed config: it is the ``python -m miner run`` CLI and is written beside the outputs."""
from __future__ import annotations

from dataclasses import dataclass, field

from cluster.config import option
from miner.readers import FORMATS

KINDS = ("change_object", "focus_object", "change_attribute", "focus_attribute")



@dataclass(frozen=True)
class MinerConfig:
    """Mine GeneCIS (reference, target, condition) triplets from a caption corpus with Ray Data."""

    input: str = field(metadata={"help": "caption corpus: a file or directory, local or s3://bucket/prefix"})
    output: str = field(metadata={"help": "output root, local or s3://bucket/prefix"})
    format: str = option("cc3m-tsv", "input format", choices=FORMATS)
    num_triplets: int = option(1_600_000, "triplets to mine for EACH enabled kind (GeneCIS: 1.6M change_object)")
    seed: int = option(0, "triplet i of kind k draws from an RNG keyed by (seed, k, i)")
    kinds: tuple[str, ...] = option(KINDS, "triplet kinds to mine", choices=KINDS)
    # reading and parsing
    shard_bytes: int = option(16 << 20, "bytes of text input per shard (a shard is the unit of resume)")
    row_groups_per_shard: int = option(1, "Parquet row groups per shard")
    max_caption_chars: int = option(1000, "longer captions are skipped as caption_too_long")
    min_ascii_letter_ratio: float = option(0.9, "captions with fewer ASCII letters are skipped as non_english")
    spacy_model: str = option("en_core_web_sm", "spaCy pipeline (NER is disabled)")
    parse_batch_size: int = option(256, "captions per nlp.pipe batch")
    parse_workers: int = option(2, "parser actors, each loads spaCy once (0: one per cluster CPU, minus one)")
    cpus_per_parse_worker: float = option(0.5, "CPUs reserved per parser actor (<=0.5 keeps a 2-CPU head free of deadlock)")
    # the mining rule (GENECIS.md §1.2-1.5)
    min_images_per_subject: int = option(5, "candidate subjects need this many distinct images")
    min_objects_per_subject: int = option(2, "candidate subjects need this many distinct objects")
    max_target_attempts: int = option(100, "target re-draws before keeping the last one (as GeneCIS)")
    redraw_on_target_failure: bool = option(False, "deviation from GeneCIS: redraw the whole sample instead of "
                                               "keeping (and flagging) an invalid last target")
    concreteness: bool = option(True, "apply the concreteness filter")
    concreteness_threshold: float = option(4.8, "accept a sample when its mean concreteness is strictly above this")
    concreteness_table: str | None = option(None, "word<TAB>score table (default: the shipped Brysbaert et al. table)")
    max_draws: int = option(10_000, "concreteness re-draws before a triplet is counted as failed")
    val_fraction: float = option(0.1, "the first fraction of each kind's triplets is the validation split")
    # output
    triplets_per_shard: int = option(100_000, "triplets per output Parquet shard")
    progress_interval_s: float = option(5.0, "seconds between progress lines")
    ray_address: str | None = option(None, "Ray address (default: RAY_ADDRESS or a local cluster)")

    def __post_init__(self) -> None:
        if self.num_triplets < 0 or not 0 <= self.val_fraction < 1:
            raise ValueError("num_triplets must be >= 0 and 0 <= val_fraction < 1")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; expected a subset of {KINDS}")

    # Fields whose change alters what is written: a rerun into the same output must keep them.
    @staticmethod
    def output_defining_fields() -> tuple[str, ...]:
        return ("input", "format", "shard_bytes", "row_groups_per_shard", "max_caption_chars",
                "min_ascii_letter_ratio", "spacy_model", "num_triplets", "seed", "kinds",
                "min_images_per_subject", "min_objects_per_subject", "max_target_attempts",
                "redraw_on_target_failure", "concreteness",
                "concreteness_threshold", "concreteness_table", "max_draws", "val_fraction",
                "triplets_per_shard")
