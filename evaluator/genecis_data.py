"""GeneCIS annotation files and images: one code path for the official files and the synthetic benchmark.

An annotation file is a JSON list of ``{"reference", "target", "condition", "gallery"}`` records whose
gallery holds the distractors only (GENECIS.md §4.1).  Items are either VG crops
``{"image_id": str, "instance_bbox": [x, y, w, h]}`` (attribute tasks, image ``{vg_root}/{image_id}.jpg``)
or COCO images ``{"val_image_id": int}`` (object tasks, image ``{coco_root}/{id:012d}.jpg``).  The
candidates of a template are ``[target] + gallery``, so the target's rank is always 0.

Images are loaded as GENECIS.md §4.2: a crop item is cut with the asymmetric 0.7 dilation
(``left = max(0, x - 0.7w)``, ``right = min(W, left + 1.7w)``, likewise vertically) and padded to a
square with black, centred; an object item is the full image.  Every path goes through
:mod:`cluster.storage`, so roots may be local paths or ``s3://`` URIs.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image

from cluster.storage import join_uri, read_bytes, require_input, resolve
from evaluator.tasks import ANNOTATIONS_DIR, COCO_DIR, TASKS, VG_DIR

DILATION = 0.7
TARGET_RANK = 0  # by construction: candidates are [target] + gallery
RECORD_KEYS = frozenset({"reference", "target", "condition", "gallery"})


class AnnotationError(ValueError):
    """An annotation file or record that does not follow the GeneCIS schema."""


@dataclass(frozen=True)
class Item:
    """One gallery/reference item: a VG crop (``bbox`` set) or a whole COCO image (``bbox`` None)."""

    image_id: str | int
    bbox: tuple[float, float, float, float] | None = None

    @property
    def is_crop(self) -> bool:
        return self.bbox is not None


@dataclass(frozen=True)
class Template:
    """A task-agnostic template; ``gallery`` holds the distractors only."""

    index: int
    condition: str
    reference: Item
    target: Item
    gallery: tuple[Item, ...]

    @property
    def candidates(self) -> tuple[Item, ...]:
        """``[target] + gallery``: the target is candidate ``TARGET_RANK`` (0)."""
        return (self.target, *self.gallery)


# ----------------------------------------------------------------------------------------- parsing
def _safe_image_id(value: object) -> str:
    """An image id becomes a file name under the image root: no separator, no '..', no NUL, <= 200 chars."""
    text = str(value)
    if not text or len(text) > 200 or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise AnnotationError(f"image_id {text[:60]!r}{'...' if len(text) > 60 else ''} cannot name a file "
                              "under the image root (empty, over 200 characters, '..', '/', '\\' or NUL)")
    return text


def parse_item(raw: object) -> Item:
    """A VG crop ``{"image_id", "instance_bbox"}`` or a COCO image ``{"val_image_id"}``."""
    if not isinstance(raw, dict):
        raise AnnotationError(f"item must be an object, got {type(raw).__name__}")
    if "val_image_id" in raw:
        value = raw["val_image_id"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise AnnotationError(f"val_image_id must be an int, got {value!r}")
        return Item(value)
    if "image_id" in raw and "instance_bbox" in raw:
        box = raw["instance_bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise AnnotationError(f"instance_bbox must be 4 numbers [x, y, w, h], got {box!r}")
        return Item(_safe_image_id(raw["image_id"]), tuple(float(v) for v in box))
    raise AnnotationError(f"item has neither val_image_id nor image_id+instance_bbox: {sorted(raw)}")


def parse_template(raw: object, index: int) -> Template:
    if not isinstance(raw, dict) or not RECORD_KEYS <= set(raw):
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise AnnotationError(f"record {index}: expected keys {sorted(RECORD_KEYS)}, got {keys}")
    if not isinstance(raw["condition"], str) or not isinstance(raw["gallery"], list):
        raise AnnotationError(f"record {index}: condition must be a string and gallery a list")
    try:
        return Template(index, raw["condition"], parse_item(raw["reference"]), parse_item(raw["target"]),
                        tuple(parse_item(g) for g in raw["gallery"]))
    except AnnotationError as err:
        raise AnnotationError(f"record {index}: {err}") from err


def parse_templates(records: object) -> list[Template]:
    """Templates from the decoded JSON; all items of one file must be of one kind (crops or images)."""
    if not isinstance(records, list):
        raise AnnotationError("an annotation file must hold a JSON list of records")
    templates = [parse_template(r, i) for i, r in enumerate(records)]
    kinds = {it.is_crop for t in templates for it in (t.reference, *t.candidates)}
    if len(kinds) > 1:
        raise AnnotationError("an annotation file mixes VG crops and COCO images")
    return templates


def load_templates(annotation_uri: str) -> list[Template]:
    """All templates of one GeneCIS annotation file (local path or s3:// URI)."""
    return parse_templates(json.loads(read_bytes(require_input(annotation_uri))))


# ----------------------------------------------------------------------------------------- images
def item_uri(item: Item, vg_root: str, coco_root: str) -> str:
    """``{vg_root}/{image_id}.jpg`` for a crop, ``{coco_root}/{id:012d}.jpg`` for a COCO image."""
    if item.is_crop:
        return join_uri(vg_root, f"{item.image_id}.jpg")
    return join_uri(coco_root, f"{int(item.image_id):012d}.jpg")


def dilated_box(bbox: tuple[float, float, float, float], width: int, height: int
                ) -> tuple[float, float, float, float]:
    """GeneCIS's asymmetric crop box: expanded left/up by 0.7 box, right/bottom from the shifted corner."""
    x, y, w, h = bbox
    left = max(0.0, x - DILATION * w)
    top = max(0.0, y - DILATION * h)
    right = min(float(width), left + (1 + DILATION) * w)
    bottom = min(float(height), top + (1 + DILATION) * h)
    return left, top, right, bottom


def _black(mode: str) -> int | tuple[int, ...]:
    bands = len(Image.new(mode, (1, 1)).getbands())
    return 0 if bands == 1 else (0,) * bands


def expand2square(img: Image.Image) -> Image.Image:
    """Pad to a square with black, the image pasted centred on the long side (as GeneCIS)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), _black(img.mode))
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def crop_instance(img: Image.Image, bbox: tuple[float, float, float, float]) -> Image.Image:
    """§4.2: the dilated crop (PIL rounds the float box, as in GeneCIS) padded to a black square."""
    return expand2square(img.crop(dilated_box(bbox, *img.size)))


def load_image(uri: str) -> Image.Image:
    """An RGB image from a local path or s3:// URI."""
    with Image.open(io.BytesIO(read_bytes(resolve(uri)))) as img:
        return img.convert("RGB")


def load_item_image(item: Item, vg_root: str, coco_root: str) -> Image.Image:
    """The image the evaluator encodes for ``item``: the §4.2 crop for VG items, else the full image."""
    img = load_image(item_uri(item, vg_root, coco_root))
    return crop_instance(img, item.bbox) if item.is_crop else img


# ----------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class BenchmarkLayout:
    """Where a GeneCIS benchmark lives: the annotation files and the two image roots."""

    annotations: str
    vg_root: str
    coco_root: str

    @classmethod
    def synthetic(cls, root: str) -> "BenchmarkLayout":
        """The layout ``python -m synthetic benchmark`` writes under ``root``."""
        return cls(join_uri(root, ANNOTATIONS_DIR), join_uri(root, *VG_DIR.split("/")),
                   join_uri(root, *COCO_DIR.split("/")))

    def annotation_uri(self, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return join_uri(self.annotations, f"{task}.json")

    def load(self, task: str) -> list[Template]:
        return load_templates(self.annotation_uri(task))

    def image(self, item: Item) -> Image.Image:
        return load_item_image(item, self.vg_root, self.coco_root)
