"""How the synthetic world looks, as one typed config block shared by ``world`` and ``benchmark``.

The benchmark must be drawn like the training world (same image size, grid, vocabulary, texture, JPEG
settings) and, to keep its scenes out of the world, must rebuild the world's scenes exactly, including
``repeat_prob``: one class for both makes a mismatch impossible to write.
"""
from __future__ import annotations

from dataclasses import dataclass

from cluster.config import option
from synthetic import scene as sc


@dataclass(frozen=True, kw_only=True)
class LookConfig:
    image_size: int = option(64, "image side in pixels")
    grid: int = option(3, "objects sit in the cells of a grid x grid layout")
    min_objects: int = option(1, "fewest objects per image")
    max_objects: int = option(4, "most objects per image")
    shapes: tuple[str, ...] = option(sc.SHAPES, "object kinds", choices=sc.SHAPES)
    colours: tuple[str, ...] = option(tuple(sc.COLOURS), "object colours", choices=tuple(sc.COLOURS))
    backgrounds: tuple[str, ...] = option(tuple(sc.BACKGROUNDS), "background tints", choices=tuple(sc.BACKGROUNDS))
    repeat_prob: float = option(0.15, "world scenes: chance an object repeats an earlier one's kind and colour "
                                      "(plural captions)")
    texture: bool = option(True, "faint background gradient (direction drawn per scene)")
    jpeg_quality: int = option(90, "JPEG quality (4:4:4, baseline)")

    def spec(self) -> sc.WorldSpec:
        """The scene-sampling spec (validates grid and object counts)."""
        return sc.WorldSpec(image_size=self.image_size, grid=self.grid, min_objects=self.min_objects,
                            max_objects=self.max_objects, shapes=self.shapes, colours=self.colours,
                            backgrounds=self.backgrounds, repeat_prob=self.repeat_prob)
