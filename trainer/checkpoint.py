"""Trainer checkpoints: one folder (local or ``s3://``) per saved step, Ray-free.

Layout of a checkpoint folder::

    model.json       {"mode": "clip"|"combiner", "model": name, "model_cfg": open_clip config,
                      "embed_dim", "combiner": {dim, projection_dim, hidden_dim, dropout} | null,
                      "step", "samples_seen"}
    backbone.pt      the open_clip state_dict
    combiner.pt      the Combiner state_dict (combiner mode only)
    train_state.pt   optimiser, scheduler, scaler, step, samples seen, data position

A run folder ``{storage-path}/{name}`` holds Ray Train's ``step_NNNNNN`` checkpoint folders;
:func:`latest_checkpoint` picks the newest complete one, :func:`load_trained` turns one into a model
the evaluator can score, and a ``clip`` run's checkpoint is the ``--backbone`` of a ``combiner`` run.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from cluster import storage
from trainer.model import Backbone, Combiner, load_backbone, register_config

MODES = ("clip", "combiner")
MODEL_JSON, BACKBONE, COMBINER, TRAIN_STATE = "model.json", "backbone.pt", "combiner.pt", "train_state.pt"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or inconsistent."""


@dataclass
class Trained:
    """A trained model: its backbone, its Combiner (None for a ``clip`` run) and its ``model.json``."""

    backbone: Backbone
    combiner: Combiner | None
    info: dict[str, Any]


def _tensor_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load_tensor_file(loc: storage.Location, device: str = "cpu") -> Any:
    return torch.load(io.BytesIO(storage.read_bytes(loc)), map_location=device, weights_only=True)


def save_checkpoint(uri: str, *, mode: str, model_name: str, model_cfg: dict[str, Any], backbone: nn.Module,
                    combiner: Combiner | None, train_state: dict[str, Any], step: int,
                    samples_seen: int, extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint folder at ``uri``; ``model.json`` is written last.  ``extra`` (e.g. the data
    position, so a driver can plan a resume without reading the optimiser state) is added to model.json."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if (mode == "combiner") != (combiner is not None):
        raise ValueError(f"mode {mode!r} {'needs' if mode == 'combiner' else 'takes no'} Combiner")
    loc = storage.resolve(uri)
    storage.ensure_dir(loc)
    files = [(loc.child(BACKBONE), _tensor_bytes(backbone.state_dict()))]
    if combiner is not None:
        files.append((loc.child(COMBINER), _tensor_bytes(combiner.state_dict())))
    state = {**train_state, "step": int(step), "samples_seen": int(samples_seen)}
    files.append((loc.child(TRAIN_STATE), _tensor_bytes(state)))
    for file_loc, data in files:
        storage.write_bytes_atomic(file_loc, data)
    info = {
        "mode": mode, "model": model_name, "model_cfg": model_cfg,
        "embed_dim": int(model_cfg["embed_dim"]),
        "combiner": combiner.config() if combiner is not None else None,
        "step": int(step), "samples_seen": int(samples_seen), **(extra or {}),
    }
    storage.write_json(loc.child(MODEL_JSON), info)


def _required_files(info: dict[str, Any]) -> list[str]:
    return [MODEL_JSON, BACKBONE, TRAIN_STATE] + ([COMBINER] if info.get("mode") == "combiner" else [])


def is_complete(loc: storage.Location) -> bool:
    """A folder holding ``model.json`` and every file it implies."""
    if not storage.exists(loc.child(MODEL_JSON)):
        return False
    info = storage.read_json(loc.child(MODEL_JSON))
    return all(storage.exists(loc.child(name)) for name in _required_files(info))


def _step_dirs(loc: storage.Location) -> list[tuple[int, storage.Location]]:
    selector = pafs.FileSelector(loc.path, recursive=False, allow_not_found=True)
    try:
        infos = loc.fs.get_file_info(selector)
    except OSError as err:
        raise storage.StorageError(f"cannot list {loc.uri}: {err}") from err
    found = []
    for info in infos:
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        match = _STEP_DIR.match(name)
        if match and info.type == pafs.FileType.Directory:
            found.append((int(match.group(1)), loc.child(name)))
    return sorted(found, key=lambda item: item[0])


def latest_checkpoint(uri: str) -> str | None:
    """The newest complete checkpoint under a run folder, or ``uri`` itself if it is a checkpoint
    folder; None when the run has none yet."""
    loc = storage.resolve(uri)
    if storage.exists(loc.child(MODEL_JSON)):
        if not is_complete(loc):
            raise CheckpointError(f"incomplete checkpoint folder: {uri}")
        return loc.uri
    registered = _registered(loc)
    for _, step_loc in reversed(_step_dirs(loc)):
        name = step_loc.path.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
        if (registered is None or name in registered) and is_complete(step_loc):
            return step_loc.uri
    return None


def _registered(run: storage.Location) -> set[str] | None:
    """Checkpoint folders Ray Train registered (its snapshot), None when the run has no snapshot: a
    folder uploaded but never registered (a worker killed right after saving) is not what Ray resumes."""
    snap = run.child(RAY_SNAPSHOT)
    if not storage.exists(snap):
        return None
    results = storage.read_json(snap).get("checkpoint_results", [])
    return {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}


def read_info(uri: str) -> dict[str, Any]:
    loc = storage.resolve(uri)
    if not storage.exists(loc.child(MODEL_JSON)):
        raise CheckpointError(f"not a checkpoint folder (no {MODEL_JSON}): {uri}")
    return storage.read_json(loc.child(MODEL_JSON))


def read_train_state(uri: str) -> dict[str, Any]:
    """The optimiser/scheduler/scaler states, step, samples seen and data position of a checkpoint."""
    return _load_tensor_file(storage.resolve(uri).child(TRAIN_STATE))


def load_state_into(uri: str, backbone: nn.Module, combiner: Combiner | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights into existing modules (strict); returns its ``model.json``."""
    loc = storage.resolve(uri)
    info = read_info(uri)
    backbone.load_state_dict(_load_tensor_file(loc.child(BACKBONE)))
    if combiner is not None:
        if info["mode"] != "combiner":
            raise CheckpointError(f"{uri} is a {info['mode']!r} checkpoint and holds no Combiner")
        combiner.load_state_dict(_load_tensor_file(loc.child(COMBINER)))
    return info


def load_trained(uri: str, device: str = "cpu") -> Trained:
    """A model ready to score from a checkpoint folder, or from a run folder (its latest checkpoint)."""
    found = latest_checkpoint(uri)
    if found is None:
        raise CheckpointError(f"no checkpoint under {uri}")
    info = read_info(found)
    register_config(info["model"], info["model_cfg"])
    backbone = load_backbone(info["model"], pretrained=None)
    combiner = Combiner(**info["combiner"]) if info["mode"] == "combiner" else None
    load_state_into(found, backbone.model, combiner)
    backbone.model.to(device).eval()
    if combiner is not None:
        combiner.to(device).eval()
    return Trained(backbone=backbone, combiner=combiner, info={**info, "uri": found})
