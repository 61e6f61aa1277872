"""The scoring heads' names, defined once (plain constants: the evaluator's config imports them without torch).

``trainer.model.combine`` builds each head's query; ``evaluator.config`` validates ``--heads`` against them.
"""
from __future__ import annotations

BASELINE_HEADS: tuple[str, ...] = ("image_only", "text_only", "image_plus_text")
COMBINER_HEADS: tuple[str, ...] = ("combiner", "combiner_plus_image")  # need a trained Combiner
HEADS: tuple[str, ...] = (*BASELINE_HEADS, *COMBINER_HEADS)
