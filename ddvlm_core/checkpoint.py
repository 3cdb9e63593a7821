"""Checkpoint format: a directory of per-module safetensors files + manifest.json.

    <dir>/manifest.json          format, format_version, labels, config, backbone, modules
    <dir>/<module>.safetensors   one per module (text_head, visual_head, fusion, optional backbone ...)

Each module is stored separately so one can be swapped (e.g. re-quantized) without re-exporting the
others. The manifest holds the sha256 of every file; loading verifies them and the label order and
refuses anything corrupt or mismatched with a CheckpointError. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddvlm_core.labels import LABELS

FORMAT = "ddvlm-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    directory: str | os.PathLike,
    modules: Mapping[str, Mapping[str, Tensor]],
    config: Mapping,
    extra: Mapping | None = None,
) -> Path:
    """Write each module's tensors to <name>.safetensors and a manifest with their hashes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, state in modules.items():
        file = directory / f"{name}.safetensors"
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        # one metadata key: safetensors writes its metadata in hash-map order, which varies from save to save, so
        # two keys gave the same weights files (and manifest hashes) that differed by their order
        save_file(tensors, file, metadata={FORMAT: name})
        entries[name] = {"file": file.name, "sha256": sha256_file(file), "tensors": len(tensors)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "labels": list(LABELS),
        "config": dict(config),
        "modules": entries,
        **(dict(extra) if extra else {}),
    }
    _write_manifest(directory, manifest)
    return directory


def _write_manifest(directory: Path, manifest: Mapping) -> None:
    """manifest.json through a temporary file and a rename: a reader sees the old manifest or the new, whole."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: str | os.PathLike) -> dict:
    """Parse and check manifest.json (format, version, label order)."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a ddvlm checkpoint)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {manifest.get('format_version')!r}, "
                              f"this ddvlm reads {FORMAT_VERSION}")
    if manifest.get("labels") != list(LABELS):
        raise CheckpointError(f"{path}: label order {manifest.get('labels')} differs from {list(LABELS)}")
    if not isinstance(manifest.get("modules"), dict) or not isinstance(manifest.get("config"), dict):
        raise CheckpointError(f"{path}: 'modules' and 'config' must be objects")
    for name, entry in manifest["modules"].items():
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("file", "sha256"))):
            raise CheckpointError(f"{path}: module {name!r} must be an object with a 'file' and its 'sha256', got "
                                  f"{entry!r:.80}")
    return manifest


def load_checkpoint(
    directory: str | os.PathLike, modules: Iterable[str] | None = None
) -> tuple[dict, dict[str, dict[str, Tensor]]]:
    """(manifest, {module: tensors}) after verifying every requested file's sha256."""
    manifest = read_manifest(directory)
    names = list(manifest["modules"]) if modules is None else list(modules)
    states = {}
    for name in names:
        entry = manifest["modules"].get(name)
        if entry is None:
            raise CheckpointError(f"{directory}: no module {name!r} (has {sorted(manifest['modules'])})")
        file = Path(directory) / entry["file"]
        if file.parent != Path(directory) or not file.is_file():
            raise CheckpointError(f"{file}: missing module file")
        if sha256_file(file) != entry["sha256"]:
            raise CheckpointError(f"{file}: sha256 mismatch (corrupt or modified file)")
        try:
            states[name] = load_file(file)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: unreadable safetensors ({e})") from None
    return manifest, states


def update_manifest(directory: str | os.PathLike, config: Mapping | None = None, extra: Mapping | None = None) -> dict:
    """Set keys of a checkpoint's config (e.g. its fitted temperatures) and top-level entries of its manifest,
    leaving every weights file as it is (their hashes still hold); the manifest is replaced whole."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest["config"].update(config or {})
    reserved = {"format", "format_version", "labels", "config", "modules"} & set(extra or {})
    if reserved:
        raise ValueError(f"update_manifest: {sorted(reserved)} are not extra entries")
    manifest.update(extra or {})
    _write_manifest(directory, manifest)
    return manifest
