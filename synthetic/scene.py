"""Ground truth of the synthetic world: scenes of 1-4 attributed objects with spatial relations.

A scene is a pure function of ``(seed, scene_id, WorldSpec)``: its RNG is ``np.random.default_rng((seed,
stream, scene_id))``, never a global one, so any worker can rebuild any scene and the world is the same
however generation is split.  Objects sit in distinct cells of a grid (with jitter), so boxes never
overlap and every relation between two objects is decided by their cells alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

import numpy as np

# ----------------------------------------------------------------------------------------- vocabulary
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond",
                           "hexagon", "pentagon", "crescent", "arrow")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 230), "yellow": (240, 220, 30),
    "purple": (140, 40, 190), "orange": (250, 140, 20), "pink": (250, 120, 190), "white": (245, 245, 245),
    "black": (20, 20, 20), "brown": (130, 80, 30)}
SIZES: tuple[str, ...] = ("small", "large")
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (150, 150, 150), "beige": (205, 190, 160), "teal": (90, 140, 140), "slate": (100, 110, 130)}
# attribute type -> values; the benchmark's focus-attribute condition names the type
ATTRIBUTES: dict[str, tuple[str, ...]] = {"color": tuple(COLOURS), "size": SIZES, "pattern": PATTERNS}
# canonical relations between two objects (subject, predicate, object)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above", "next to": "next to"}

# side of an object's box as a fraction of its grid cell: at 64 px / 3x3 that is 18 px vs 12 px, the
# smallest at which all 12 shapes stay distinct and stripes/dots stay visible (synthetic/render.py)
SIZE_FRACTION: dict[str, float] = {"large": 0.85, "small": 0.55}

STREAM_SCENE = 1  # RNG stream ids: one per purpose, so adding a purpose never shifts another's draws
STREAM_TEXTURE = 2  # render.py: background gradient, rng((STREAM_TEXTURE, scene_id))
STREAM_CAPTION = 3  # world.py: captions of a scene, rng((seed, STREAM_CAPTION, scene_id))
STREAM_REPEAT = 4  # sample_scene: repeated kinds (only drawn when WorldSpec.repeat_prob > 0)


@dataclass(frozen=True)
class WorldSpec:
    """What a world looks like; every field is a knob of the `world` CLI."""

    image_size: int = 64
    grid: int = 3
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = SIZES
    patterns: tuple[str, ...] = PATTERNS
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    # chance that an object takes the kind and colour of an earlier one ("two red stars"); 0 keeps every
    # scene exactly as without this knob (its draws come from their own stream)
    repeat_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.repeat_prob <= 1.0:
            raise ValueError("repeat_prob must be in [0, 1]")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError("need 1 <= min_objects <= max_objects <= grid*grid")
        if self.image_size < 16 * self.grid // 3:
            raise ValueError(f"image_size {self.image_size} too small for a {self.grid}x{self.grid} grid")


@dataclass(frozen=True)
class Obj:
    """One object: kind, attributes, its grid cell and its pixel box [x, y, w, h]."""

    shape: str
    colour: str
    size: str
    pattern: str
    cell: tuple[int, int]  # (row, col)
    box: tuple[int, int, int, int]

    def value(self, attribute_type: str) -> str:
        return {"color": self.colour, "size": self.size, "pattern": self.pattern}[attribute_type]


@dataclass(frozen=True)
class Scene:
    scene_id: int
    image_size: int
    background: str
    objects: tuple[Obj, ...]
    relations: tuple[tuple[int, str, int], ...] = field(default=())

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Scene":
        objs = tuple(Obj(o["shape"], o["colour"], o["size"], o["pattern"], tuple(o["cell"]), tuple(o["box"]))
                     for o in d["objects"])
        return cls(d["scene_id"], d["image_size"], d["background"], objs,
                   tuple((int(s), str(p), int(o)) for s, p, o in d["relations"]))

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}


def relation_between(a: tuple[int, int], b: tuple[int, int]) -> str | None:
    """Canonical relation of the object in cell ``a`` to the one in cell ``b`` (None if not salient).

    Same row: adjacent columns are "next to" as well as left/right; "left of"/"right of" are used when
    the rows match, "above"/"below" when the columns match; diagonal pairs have no relation.
    """
    (ra, ca), (rb, cb) = a, b
    if ra == rb:
        return "left of" if ca < cb else "right of"
    if ca == cb:
        return "above" if ra < rb else "below"
    return None


def scene_relations(objects: tuple[Obj, ...]) -> tuple[tuple[int, str, int], ...]:
    rels = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            rel = relation_between(a.cell, b.cell)
            if rel:
                rels.append((i, rel, j))
                if rel in ("left of", "right of") and abs(a.cell[1] - b.cell[1]) == 1:
                    rels.append((i, "next to", j))
    return tuple(rels)


def cell_box(cell: tuple[int, int], size: str, spec: WorldSpec, jitter: tuple[float, float]) -> tuple[int, int, int, int]:
    """Pixel box of an object in a cell (side = SIZE_FRACTION of the cell); jitter in [0, 1)."""
    cell_px = spec.image_size / spec.grid
    side = int(round(cell_px * SIZE_FRACTION[size]))
    slack = cell_px - side
    x = int(cell[1] * cell_px + jitter[0] * slack)
    y = int(cell[0] * cell_px + jitter[1] * slack)
    return (x, y, side, side)


def make_object(shape: str, colour: str, size: str, pattern: str, cell: tuple[int, int], spec: WorldSpec,
                rng: np.random.Generator) -> Obj:
    return Obj(shape, colour, size, pattern, cell, cell_box(cell, size, spec, tuple(rng.random(2))))


def sample_scene(seed: int, scene_id: int, spec: WorldSpec = WorldSpec()) -> Scene:
    """The random scene ``scene_id`` of the world ``seed``: distinct cells, distinct shapes unless ``repeat_prob``."""
    rng = np.random.default_rng((seed, STREAM_SCENE, scene_id))
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    cells = rng.choice(spec.grid * spec.grid, size=n, replace=False)
    shapes = rng.choice(len(spec.shapes), size=n, replace=n > len(spec.shapes))
    objs = []
    for k in range(n):
        cell = (int(cells[k]) // spec.grid, int(cells[k]) % spec.grid)
        objs.append(make_object(spec.shapes[shapes[k]], spec.colours[rng.integers(len(spec.colours))],
                                spec.sizes[rng.integers(len(spec.sizes))],
                                spec.patterns[rng.integers(len(spec.patterns))], cell, spec, rng))
    if spec.repeat_prob > 0:
        objs = repeat_kinds(objs, np.random.default_rng((seed, STREAM_REPEAT, scene_id)), spec.repeat_prob)
    return with_objects(scene_id, spec, spec.backgrounds[rng.integers(len(spec.backgrounds))], objs)


def repeat_kinds(objs: list[Obj], rng: np.random.Generator, p: float) -> list[Obj]:
    """Each object after the first copies the shape and colour of an earlier one with probability ``p``."""
    out = list(objs)
    for k in range(1, len(out)):
        if rng.random() < p:
            src = out[int(rng.integers(k))]
            out[k] = replace(out[k], shape=src.shape, colour=src.colour)
    return out


def with_objects(scene_id: int, spec: WorldSpec, background: str, objects: list[Obj] | tuple[Obj, ...]) -> Scene:
    """A scene from explicit objects (used by the benchmark to edit scenes); relations recomputed."""
    objs = tuple(sorted(objects, key=lambda o: o.cell))  # reading order: row-major cells
    cells = [o.cell for o in objs]
    if len(set(cells)) != len(cells):
        raise ValueError(f"scene {scene_id}: two objects share a cell")
    return Scene(scene_id, spec.image_size, background, objs, scene_relations(objs))


def free_cells(scene: Scene, spec: WorldSpec) -> list[tuple[int, int]]:
    used = {o.cell for o in scene.objects}
    return [(r, c) for r in range(spec.grid) for c in range(spec.grid) if (r, c) not in used]


def iter_scenes(seed: int, start: int, stop: int, spec: WorldSpec = WorldSpec()) -> Iterator[Scene]:
    for scene_id in range(start, stop):
        yield sample_scene(seed, scene_id, spec)
