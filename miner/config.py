"""The miner's typed config: it is the ``python -m miner run`` CLI and is pinned beside the outputs.

Every field defines the output unless declared ``runtime=True`` (cluster.config.option): a rerun into
the same output must keep the others.
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.config import ConfigError, option, required, validate_fields
from miner.attributes import ATTRIBUTE_TYPES, UNTYPED
from miner.concreteness import parse_overrides
from miner.readers import FORMATS

KINDS = ("change_object", "focus_object", "change_attribute", "focus_attribute")
CHANGE_OBJECT_CONDITIONS = ("predicate_object", "object")
# Counts ("two dogs", "3 cats") are not attributes in the sense of GeneCIS's attribute tasks (VAW has no
# count type), so the attribute kinds leave them out unless asked; untyped values ("wet", "empty") stay.
DEFAULT_ATTRIBUTE_TYPES = tuple(t for t in ATTRIBUTE_TYPES if t != "count") + (UNTYPED,)


@dataclass(frozen=True)
class MinerConfig:
    """Mine GeneCIS (reference, target, condition) triplets from a caption corpus with Ray Data."""

    input: str = required("caption corpus: a file or directory, local path or s3://bucket/prefix", uri=True)
    output: str = required("output root, local path or s3://bucket/prefix (no byte depends on where it is)",
                           uri=True, runtime=True)
    format: str = option("cc3m-tsv", "input format", choices=FORMATS)
    num_triplets: int = option(1_600_000, "triplets to mine for EACH enabled kind (GeneCIS: 1.6M change_object)",
                               min=0)
    seed: int = option(0, "triplet i of kind k draws from an RNG keyed by (seed, k, i)", min=0)
    kinds: tuple[str, ...] = option(KINDS, "triplet kinds to mine", choices=KINDS)
    # reading and parsing
    shard_bytes: int = option(16 << 20, "bytes of text input per shard (a shard is the unit of resume)", min=1)
    row_groups_per_shard: int = option(1, "Parquet row groups per shard", min=1)
    max_caption_chars: int = option(1000, "longer captions are skipped as caption_too_long", min=1)
    min_ascii_letter_ratio: float = option(0.9, "captions with fewer ASCII letters are skipped as non_english",
                                           min=0.0, max=1.0)
    spacy_model: str = option("en_core_web_sm", "spaCy pipeline: an installed package or a model folder "
                                                "(NER is disabled)")
    drop_meta_nouns: bool = option(True, "leave picture-about-a-picture nouns (photo, illustration, view, ...: "
                                         "miner.lexicon.META_NOUNS) out of the scene graphs")
    parse_batch_size: int = option(256, "captions per nlp.pipe batch", runtime=True, min=1)
    parse_workers: int = option(2, "parser actors, each loads spaCy once (0: one per cluster CPU, minus one)",
                                runtime=True, min=0)
    cpus_per_parse_worker: float = option(0.5, "CPUs reserved per parser actor (<=0.5 keeps a 2-CPU head free "
                                               "of deadlock)", runtime=True, min=0.01)
    parse_actor_restarts: int = option(0, "restarts of a dead parser actor (0: the run fails and a rerun "
                                          "redoes only the shards without a marker; -1: Ray restarts it, e.g. "
                                          "on preemptible nodes)", runtime=True, min=-1)
    # the mining rule (GENECIS.md §1.2-1.5)
    min_images_per_subject: int = option(5, "candidate subjects need this many distinct images", min=1)
    min_objects_per_subject: int = option(2, "candidate subjects need this many distinct objects", min=1)
    max_target_attempts: int = option(100, "target re-draws before keeping the last one (as GeneCIS)", min=1)
    redraw_on_target_failure: bool = option(False, "deviation from GeneCIS: redraw the whole sample instead of "
                                                   "keeping (and flagging) an invalid last target")
    concreteness: bool = option(True, "apply the concreteness filter")
    concreteness_threshold: float = option(4.8, "accept a sample when its mean concreteness is strictly above "
                                                "this")
    concreteness_table: str | None = option(None, "word<TAB>score table (default: the shipped Brysbaert et al. "
                                                  "table)", uri=True)
    attribute_types: tuple[str, ...] = option(
        DEFAULT_ATTRIBUTE_TYPES, "the attribute kinds draw only values of these types (miner.attributes; "
        f"'{UNTYPED}': values the lexicon does not know)", choices=ATTRIBUTE_TYPES + (UNTYPED,))
    concreteness_overrides: tuple[str, ...] = option(
        (), "WORD=SCORE entries replacing the table's score of WORD (for a corpus whose objects the table "
            "rates as abstract, e.g. the procedural world's shapes)")
    change_object_condition: str = option(
        "predicate_object", "condition text of change_object triplets: 'predicate_object' is GeneCIS's (\"on "
        "canvas\", GENECIS.md §1.3); 'object' keeps the object alone (\"canvas\"), the form of the benchmark's "
        "change-object conditions (COCO nouns such as \"wall\")", choices=CHANGE_OBJECT_CONDITIONS)
    similar_targets: int = option(
        0, "change kinds: the target is the most reference-like of this many valid target draws (the image "
           "sharing the most entity names and (noun, attribute) pairs with the reference's, never the "
           "reference's own picture); 0 = GeneCIS's first valid draw", min=0)
    max_draws: int = option(10_000, "concreteness re-draws before a triplet is counted as failed", min=1)
    val_fraction: float = option(0.1, "the first fraction of each kind's triplets is the validation split",
                                 min=0.0)
    # output
    triplets_per_shard: int = option(100_000, "triplets per output Parquet shard", min=1)
    progress_interval_s: float = option(5.0, "seconds between progress lines", runtime=True, min=0.1)
    ray_address: str | None = option(None, "Ray address (default: RAY_ADDRESS or a local instance)",
                                     runtime=True)

    def __post_init__(self) -> None:
        validate_fields(self)
        try:
            parse_overrides(self.concreteness_overrides)
        except ValueError as err:
            raise ConfigError(f"--concreteness-overrides: {err}") from None
        if not self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be < 1, got {self.val_fraction}")
        if self.similar_targets > self.max_target_attempts:
            raise ConfigError(f"--similar-targets {self.similar_targets} exceeds --max-target-attempts "
                              f"{self.max_target_attempts} (the draws it ranks come from those attempts)")
