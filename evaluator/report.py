"""results.md: our numbers in the shape of the paper's Table 2, the published numbers beside them.

The published numbers (GENECIS.md §5.1, §5.3) are R@1 in percent.  Per-task values exist only for
RN50x4; for other backbones the poster gives the averages of CLIP Image + Text and the CC3M Combiner.
They are shown only when our backbone is the paper's (the baselines also need OpenAI weights).
"""
from __future__ import annotations

import re

from evaluator.tasks import TASKS

TASK_TITLES = {"focus_attribute": "Focus Attribute", "change_attribute": "Change Attribute",
               "focus_object": "Focus Object", "change_object": "Change Object"}
HEAD_TITLES = {"image_only": "Image Only", "text_only": "Text Only", "image_plus_text": "Image + Text",
               "combiner": "Combiner", "combiner_plus_image": "Combiner + w·Image"}


def head_title(head: str, results: dict) -> str:
    """A head's table title; the late-fusion head shows its weight (``Combiner + 0.1·Image``)."""
    w = results.get("config", {}).get("reference_weight")
    if head == "combiner_plus_image" and w is not None:
        return f"Combiner + {w:g}·Image"
    return HEAD_TITLES.get(head, head)


# Paper Table 2 (RN50x4), R@1 %: focus attr, change attr, focus obj, change obj, average.
PAPER_RN50X4: dict[str, tuple[str, tuple[float, float, float, float, float]]] = {
    "image_only": ("CLIP Image only", (17.7, 11.9, 9.3, 7.2, 11.5)),
    "text_only": ("CLIP Text only", (10.2, 9.5, 6.5, 6.2, 8.1)),
    "image_plus_text": ("CLIP Image + Text", (15.6, 12.6, 10.8, 11.3, 12.6)),
    "combiner": ("Combiner (CC3M), paper", (19.0, 16.6, 14.7, 16.8, 16.8)),
}
# Poster: average R@1 per backbone (CLIP Image + Text, CC3M Combiner).
PAPER_AVERAGES: dict[str, dict[str, float]] = {
    "RN50": {"image_plus_text": 12.73, "combiner": 16.23},
    "RN101": {"image_plus_text": 12.70, "combiner": 16.78},
    "ViT-B/32": {"image_plus_text": 12.76, "combiner": 17.64},
    "RN50x4": {"image_plus_text": 12.48, "combiner": 16.76},
    "ViT-B/16": {"image_plus_text": 12.98, "combiner": 17.63},
    "RN50x16": {"image_plus_text": 14.15, "combiner": 16.99},
}


def ordered_heads(results: dict) -> list[str]:
    """The heads of a results dict in the paper's order (image, text, image+text, combiner), then others."""
    heads = list(results["heads"])
    return [h for h in HEAD_TITLES if h in heads] + [h for h in heads if h not in HEAD_TITLES]


def paper_backbone(name: str) -> str | None:
    """The paper's spelling of an open_clip model name (``ViT-B-16-quickgelu`` -> ``ViT-B/16``), if any."""
    base = re.sub(r"-quickgelu$", "", name)
    base = re.sub(r"^ViT-B-(\d+)$", r"ViT-B/\1", base)
    return base if base in PAPER_AVERAGES else None


def paper_row(head: str, model: dict) -> tuple[str, dict[str, float | None]] | None:
    """(label, {task or 'average': R@1}) published for this head and backbone, or None."""
    backbone = paper_backbone(model.get("name", ""))
    if backbone is None:
        return None
    clip_weights = model.get("pretrained") == "openai"
    if head != "combiner" and not clip_weights:
        return None
    if backbone == "RN50x4" and head in PAPER_RN50X4:
        label, values = PAPER_RN50X4[head]
        return label, {**dict(zip(TASKS, values[:4])), "average": values[4]}
    avg = PAPER_AVERAGES[backbone].get(head)
    if avg is None:
        return None
    label = "Combiner (CC3M), paper" if head == "combiner" else PAPER_RN50X4[head][0]
    return label, {**{t: None for t in TASKS}, "average": avg}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def results_markdown(results: dict) -> str:
    """The Table 2-shaped R@1 table (ours, and the paper's row under each head it has), then R@2/R@3."""
    tasks = [t for t in TASKS if t in results["tasks"]]
    model = results["model"]
    header = "| Method | " + " | ".join(TASK_TITLES[t] for t in tasks) + " | **Average** |"
    rule = "|---" * (len(tasks) + 2) + "|"
    lines = [f"# GeneCIS R@1 (%) — {model['name']}"
             + (f" ({model['pretrained']})" if model.get("pretrained") else "")
             + (f", checkpoint {model['checkpoint']}" if model.get("checkpoint") else ""), "",
             header, rule]
    for head in ordered_heads(results):
        entry = results["heads"][head]
        lines.append(f"| {head_title(head, results)} (ours) | "
                     + " | ".join(_cell(entry[t]["r1"]) for t in tasks) + f" | **{entry['average_r1']:.1f}** |")
        paper = paper_row(head, model)
        if paper is not None:
            label, values = paper
            lines.append(f"| {label} | " + " | ".join(_cell(values[t]) for t in tasks)
                         + f" | {_cell(values['average'])} |")
    lines += ["", "Chance R@1: " + ", ".join(
        f"{TASK_TITLES[t]} {next(iter(results['heads'].values()))[t]['chance_r1']:.2f}" for t in tasks), ""]
    lines += ["## R@1 / R@2 / R@3 (%)", "", "| Head | " + " | ".join(TASK_TITLES[t] for t in tasks) + " |",
              "|---" * (len(tasks) + 1) + "|"]
    for head in ordered_heads(results):
        entry = results["heads"][head]
        lines.append(f"| {head_title(head, results)} | " + " | ".join(
            f"{entry[t]['r1']:.1f} / {entry[t]['r2']:.1f} / {entry[t]['r3']:.1f}" for t in tasks) + " |")
    lines += ["", "## Templates and encodes", "", "| Task | Templates scored | Skipped |", "|---|---|---|"]
    for t in tasks:
        info = results["tasks"][t]
        lines.append(f"| {TASK_TITLES[t]} | {info['scored']:,} | {info['skipped']:,} |")
    enc = results["encodes"]
    lines += ["", f"Images: {enc['images']['encoded']:,} encoded + {enc['images']['from_cache']:,} from cache "
                  f"for {enc['images']['slots_all_heads']:,} slots over {len(results['heads'])} head(s); "
                  f"texts: {enc['texts']['encoded']:,} encoded + {enc['texts']['from_cache']:,} from cache "
                  f"for {enc['texts']['slots_all_heads']:,} slots.", ""]
    return "\n".join(lines)
