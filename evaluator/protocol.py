"""The Ray-free parts of a GeneCIS run around encoding: which tasks, which templates, bad input, results.

- :func:`discover_tasks`: the task files present under ``--annotations`` (absent tasks are not scored;
  other file names are reported).
- :func:`load_tasks`: every present file parsed by :mod:`evaluator.genecis_data`, fingerprinted, cut to
  ``--max-templates``; a malformed record fails naming its task and index.
- :func:`bad_items`: missing or unreadable images -> an error naming task, template index and path, or
  (``--skip-missing``) the templates to drop, counted per task with examples.
- :func:`build_results`: the ``results.json`` document.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass

from cluster import storage
from evaluator.genecis_data import AnnotationError, Item, Template, parse_templates
from evaluator.plan import EncodePlan, item_uses
from evaluator.tasks import TASKS

SCHEMA_VERSION = 1


class MissingImageError(storage.StorageError):
    """An image a template needs is missing or unreadable (and --skip-missing was not given)."""


class UnfinishedRunError(RuntimeError):
    """An output folder that holds a started but unfinished evaluation (no results.json)."""


@dataclass
class TaskData:
    task: str
    uri: str
    sha256: str
    total: int  # templates in the file
    templates: list[Template]  # the ones to score (first --max-templates)


def discover_tasks(annotations_uri: str) -> tuple[dict[str, str], list[str]]:
    """({task: file URI} of the task files present, [other file names found there])."""
    root = storage.require_input(annotations_uri)
    found: dict[str, str] = {}
    unknown: list[str] = []
    for loc in storage.list_files(root):
        rel = loc.path[len(root.path):].lstrip("/").lstrip(os.sep)
        task = rel[:-len(".json")] if rel.endswith(".json") else None
        if task in TASKS:
            found[task] = loc.uri
        else:
            unknown.append(rel)
    if not found:
        raise AnnotationError(f"no GeneCIS task file under {annotations_uri}: expected any of "
                              f"{[t + '.json' for t in TASKS]}, found {unknown[:10]}")
    return {t: found[t] for t in TASKS if t in found}, unknown


def load_tasks(files: dict[str, str], max_templates: int = 0) -> dict[str, TaskData]:
    """Parse each task file (a malformed record names its task and index) and keep the first N templates."""
    out: dict[str, TaskData] = {}
    for task, uri in files.items():
        raw = storage.read_bytes(storage.require_input(uri))
        try:
            templates = parse_templates(json.loads(raw))
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{task} ({uri}): not valid JSON: {err}") from err
        except AnnotationError as err:
            raise AnnotationError(f"{task} ({uri}): {err}") from err
        kept = templates[:max_templates] if max_templates else templates
        out[task] = TaskData(task, uri, hashlib.sha256(raw).hexdigest(), len(templates), kept)
    return out


def bad_items(bad: dict[Item, tuple[str, str]], templates: dict[str, list[Template]], uri_of, skip: bool,
              examples: int = 5) -> tuple[dict[str, set[int]], dict[str, dict]]:
    """Templates to drop per task and the per-task skip report, or MissingImageError when not skipping.

    ``bad`` maps each bad item to ``(reason, detail)``, reason ``missing_image`` or ``unreadable_image``.
    """
    if not bad:
        return {}, {}
    uses = item_uses(templates)
    if not skip:
        first = min(bad, key=lambda it: (TASKS.index(uses[it][0][0]), uses[it][0][1]))
        (task, index), (reason, detail) = uses[first][0], bad[first]
        raise MissingImageError(
            f"{task} template {index}: {reason.replace('_', ' ')} {uri_of(first)}"
            + (f" ({detail})" if detail else "")
            + f"; {len(bad):,} bad image(s) in all (--skip-missing counts and skips their templates)")
    drop: dict[str, set[int]] = {}
    report: dict[str, dict] = {}
    for it, (reason, detail) in bad.items():
        for task in dict.fromkeys(t for t, _ in uses[it]):
            entry = report.setdefault(task, {"templates": 0, "images_by_reason": {}, "examples": []})
            entry["images_by_reason"][reason] = entry["images_by_reason"].get(reason, 0) + 1
        for task, index in uses[it]:
            drop.setdefault(task, set()).add(index)
            entry = report[task]
            if len(entry["examples"]) < examples:
                entry["examples"].append({"template": index, "path": uri_of(it), "reason": reason,
                                          "detail": detail})
    for task, indices in drop.items():
        report[task]["templates"] = len(indices)
    return drop, report


def images_identity(stats: dict[Item, tuple[int, int]]) -> dict:
    """What a run pins about its images: count, bytes and a digest of every (item, size, mtime)."""
    digest = hashlib.sha256()
    for it, (size, mtime) in sorted(stats.items(), key=lambda kv: (str(kv[0].image_id), kv[0].bbox or ())):
        digest.update(f"{it.image_id}\t{it.bbox}\t{size}\t{mtime}\n".encode())
    return {"files": len(stats), "bytes": sum(s for s, _ in stats.values()), "sha256": digest.hexdigest()}


def encode_counts(plan: EncodePlan, heads: int, encoded: dict[str, int], cached: dict[str, int]) -> dict:
    """Encodes done vs slots, for images and texts; ``slots_all_heads`` is what a per-head loop encodes."""
    c = plan.counts()
    return {
        "images": {"slots": c["image_slots"], "slots_all_heads": c["image_slots"] * heads,
                   "distinct": c["distinct_images"], "encoded": encoded["image"], "from_cache": cached["image"]},
        "texts": {"slots": c["text_slots"], "slots_all_heads": c["text_slots"] * heads,
                  "distinct": c["distinct_texts"], "encoded": encoded["text"], "from_cache": cached["text"]},
    }


def build_results(*, heads: dict, tasks: dict[str, TaskData], plan: EncodePlan, skipped: dict[str, dict],
                  model: dict, data: dict, encodes: dict, timings: dict, config: dict) -> dict:
    """The results.json document (R@k and averages in percent)."""
    task_info = {}
    for task, td in tasks.items():
        idx = plan.tasks[task]
        task_info[task] = {"file": td.uri, "sha256": td.sha256, "templates_in_file": td.total,
                           "selected": len(td.templates), "scored": len(idx),
                           "skipped": skipped.get(task, {}).get("templates", 0),
                           "gallery_size": sorted({int(s) for s in idx.gallery_sizes}) if len(idx) else []}
    return {"schema": SCHEMA_VERSION, "heads": heads, "tasks": task_info, "skipped": skipped, "model": model,
            "data": data, "encodes": encodes, "timings": timings, "config": config, "versions": _versions()}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "open_clip_torch", "ray", "numpy", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def read_results(output_uri: str) -> dict:
    """The results of a finished run; an unfinished one (config.json but no results.json) is an error."""
    out = storage.resolve(output_uri)
    loc = out.child("results.json")
    if storage.exists(loc):
        return storage.read_json(loc)
    if storage.exists(out.child("config.json")):
        raise UnfinishedRunError(f"{output_uri} holds an unfinished evaluation (no results.json yet)")
    raise storage.StorageError(f"no evaluation results at {output_uri}")
