"""The GeneCIS benchmark's fixed facts, defined once: task names and groups, gallery sizes, directory names.

Imported by the loader (``evaluator.genecis_data``), the synthetic benchmark's template drawing and
writing (``synthetic.templates``, ``synthetic.benchmark``) and its ground-truth proofs
(``synthetic.oracles``), so a benchmark written by one is read by the other by construction.
Plain constants only: no imports, no side effects.
"""
from __future__ import annotations

TASKS: tuple[str, ...] = ("focus_attribute", "change_attribute", "focus_object", "change_object")
ATTRIBUTE_TASKS: tuple[str, ...] = ("focus_attribute", "change_attribute")  # VG crops (image_id + instance_bbox)
OBJECT_TASKS: tuple[str, ...] = ("focus_object", "change_object")  # whole COCO images (val_image_id)
GALLERY_SIZE: dict[str, int] = {"focus_attribute": 10, "change_attribute": 15, "focus_object": 15,
                                "change_object": 15}  # candidates per template, the target included

# Directory layout of a benchmark root (the official one and ``python -m synthetic benchmark``'s):
ANNOTATIONS_DIR = "annotations"  # {task}.json
VG_DIR = "vg/VG_100K_all"  # attribute-task images: {image_id}.jpg
COCO_DIR = "coco/val2017"  # object-task images: {val_image_id:012d}.jpg
