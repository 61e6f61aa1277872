"""Ray-free encoding: which model, its fingerprint, reading an item's image, and raw features in float32.

The evaluator scores with the trainer's model code: :func:`trainer.model.load_backbone` for an open_clip
name (+ pretrained tag or local weights, or random init for ``tiny``) and
:func:`trainer.checkpoint.load_trained` for a trainer run or checkpoint folder.  Features are *raw*
(unnormalised) as in GeneCIS §4.3; the model runs in eval mode, float32, without autocast.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from cluster import storage
from evaluator.genecis_data import Item, crop_instance, item_uri


class ModelError(ValueError):
    """A model request that cannot be honoured (unknown name, head without its Combiner, mismatch)."""


@dataclass(frozen=True)
class ModelSpec:
    """What to score: an open_clip name, optional pretrained tag/path, optional trainer checkpoint."""

    name: str
    pretrained: str | None = None
    checkpoint: str | None = None


@dataclass
class LoadedModel:
    backbone: object  # trainer.model.Backbone
    combiner: object | None  # trainer.model.Combiner
    checkpoint: str | None  # the resolved checkpoint folder, when one was loaded


def check_model(spec: ModelSpec, need_combiner: bool) -> dict:
    """Cheap checks before any output is written: the name exists, the weights file or checkpoint is
    there and matches ``--model``, and it holds a Combiner when the combiner head is asked for."""
    if not spec.checkpoint:
        from trainer.model import model_config

        try:
            model_config(spec.name)
        except ValueError as err:
            raise ModelError(str(err)) from err
        if spec.pretrained and os.path.sep in spec.pretrained and not os.path.isfile(spec.pretrained):
            raise ModelError(f"--pretrained weights file not found: {spec.pretrained}")
        return {}
    from trainer.checkpoint import latest_checkpoint, read_info

    found = latest_checkpoint(spec.checkpoint)
    if found is None:
        raise ModelError(f"no complete checkpoint under {spec.checkpoint}")
    info = read_info(found)
    if info["model"] != spec.name:
        raise ModelError(f"--model {spec.name!r} does not match the checkpoint's backbone {info['model']!r} "
                         f"({found})")
    if need_combiner and info.get("mode") != "combiner":
        raise ModelError(f"head 'combiner' needs a checkpoint with a Combiner; {found} is a "
                         f"{info.get('mode')!r} checkpoint")
    return {**info, "uri": found}


def load_model(spec: ModelSpec, device: str = "cpu") -> LoadedModel:
    """The backbone (and Combiner, if the checkpoint holds one) named by ``spec``, in eval mode."""
    if spec.checkpoint:
        from trainer.checkpoint import load_trained

        trained = load_trained(spec.checkpoint, device=device)
        if trained.backbone.name != spec.name:
            raise ModelError(f"--model {spec.name!r} does not match the checkpoint's backbone "
                             f"{trained.backbone.name!r} ({spec.checkpoint})")
        if spec.pretrained:
            raise ModelError("--pretrained and --checkpoint are exclusive: the checkpoint holds the weights")
        return LoadedModel(trained.backbone, trained.combiner, trained.info.get("uri", spec.checkpoint))
    from trainer.model import load_backbone

    try:
        backbone = load_backbone(spec.name, pretrained=spec.pretrained or None)
    except RuntimeError as err:  # open_clip: unknown tag or weights that do not fit the model
        raise ModelError(f"cannot load {spec.name!r} with pretrained={spec.pretrained!r}: {err}") from err
    backbone.model.to(device).eval()
    return LoadedModel(backbone, None, None)


def _hash_state(h: "hashlib._Hash", module) -> None:
    """Feed every tensor of a module's state dict (name, dtype, shape, raw bytes) into ``h``."""
    import torch

    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def backbone_fingerprint(backbone) -> str:
    """sha256 of everything that decides an embedding: weights, preprocessing, tokenizer length."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": backbone.name, "image_size": backbone.image_size,
                         "context_length": backbone.context_length,
                         "preprocess": repr(backbone.preprocess_eval)}, sort_keys=True).encode())
    _hash_state(h, backbone.model)
    return h.hexdigest()


def module_fingerprint(module) -> str | None:
    if module is None:
        return None
    h = hashlib.sha256()
    _hash_state(h, module)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- images
class ImageReader:
    """Reads items' images with one resolved filesystem per root (not one per image)."""

    def __init__(self, vg_root: str, coco_root: str):
        self.vg_root, self.coco_root = vg_root, coco_root
        self._roots = {True: storage.resolve(vg_root), False: storage.resolve(coco_root)}

    def root(self, item: Item) -> storage.Location:
        return self._roots[item.is_crop]

    def uri(self, item: Item) -> str:
        return item_uri(item, self.vg_root, self.coco_root)

    def location(self, item: Item) -> storage.Location:
        return self.root(item).child(os.path.basename(self.uri(item)))

    def image(self, item: Item) -> Image.Image:
        """§4.2: the dilated crop padded to a black square for a VG item, else the whole image (RGB)."""
        with Image.open(io.BytesIO(storage.read_bytes(self.location(item)))) as img:
            rgb = img.convert("RGB")
        return crop_instance(rgb, item.bbox) if item.is_crop else rgb


def stat_items(items: Iterable[Item], reader: ImageReader) -> tuple[dict[Item, tuple[int, int]], list[Item]]:
    """(size, mtime_ns) of every item's image file, and the items whose file is missing.

    One directory listing per image root, not one request per image (S3: a paginated LIST).
    """
    by_root: dict[bool, list[Item]] = {}
    for it in items:
        by_root.setdefault(it.is_crop, []).append(it)
    stats: dict[Item, tuple[int, int]] = {}
    missing: list[Item] = []
    for group in by_root.values():
        root = reader.root(group[0])
        listing = _list_dir(root.fs, root.path, root.uri)
        for it in group:
            info = listing.get(reader.location(it).path)
            if info is None:
                missing.append(it)
            else:
                stats[it] = info
    return stats, missing


def _list_dir(fs, path: str, uri: str) -> dict[str, tuple[int, int]]:
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError as err:
        raise storage.StorageError(f"cannot list image root {uri}: {err}") from err
    return {i.path: (int(i.size or 0), int(i.mtime_ns or 0)) for i in infos if i.type == pafs.FileType.File}


# ----------------------------------------------------------------------------------------- encoder
class Encoder:
    """Raw float32 features of images (PIL) and texts with one backbone on one device."""

    def __init__(self, backbone, device: str = "cpu"):
        import torch

        self.torch = torch
        self.backbone = backbone
        self.device = device
        backbone.model.to(device).float().eval()

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        torch = self.torch
        if not images:
            return np.zeros((0, self.backbone.embed_dim), dtype=np.float32)
        batch = torch.stack([self.backbone.preprocess_eval(img) for img in images]).to(self.device)
        with torch.inference_mode():
            return self.backbone.encode_image(batch).float().cpu().numpy()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        if not texts:
            return np.zeros((0, self.backbone.embed_dim), dtype=np.float32)
        tokens = self.backbone.tokenize(list(texts)).to(self.device)  # truncated to the context length
        with torch.inference_mode():
            return self.backbone.encode_text(tokens).float().cpu().numpy()


def pick_device(gpus: float) -> str:
    """``cuda`` when this worker was given a GPU and torch sees one, else ``cpu``."""
    import torch

    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
