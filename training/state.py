"""Resumable training state in safetensors + JSON (nothing unpicklable): trainable weights, EMA teacher,
optimizer and scheduler state, RNG state, epoch and best-so-far."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from training.config import ConfigError

STATE_DIR = "last"


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (requires_grad parameters) plus buffers of those modules."""
    return {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise KeyError(f"state has unknown parameters: {sorted(missing)[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(run_dir: Path, student: torch.nn.Module, teacher: torch.nn.Module | None, opt, sched,
               info: dict) -> None:
    """Atomically replace run_dir/last with the state after a finished epoch."""
    tmp = run_dir / (STATE_DIR + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {f"student.{k}": v for k, v in trainable_state(student).items()}
    if teacher is not None:
        tensors |= {f"teacher.{k}": v for k, v in trainable_state_like(teacher, student).items()}
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors |= opt_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "state.safetensors")
    meta = {"info": info, "optimizer": opt_meta, "scheduler": sched.state_dict() if sched else None}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    final = run_dir / STATE_DIR
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    os.replace(tmp, final)


def trainable_state_like(teacher: torch.nn.Module, student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's copies of the student's trainable parameters (the teacher itself has no grads)."""
    names = {k for k, v in student.named_parameters() if v.requires_grad}
    return {k: v.detach().clone() for k, v in teacher.named_parameters() if k in names}


def load_state(run_dir: Path, student, teacher, opt, sched) -> dict | None:
    """Restore run_dir/last into the given objects; returns its info dict, or None if there is none."""
    path = run_dir / STATE_DIR
    if not (path / "state.json").is_file():
        return None
    try:
        tensors = load_file(path / "state.safetensors")
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        complete = isinstance(meta, dict) and {"info", "optimizer", "scheduler"} <= set(meta) and "rng.torch" in tensors
        if not complete:
            raise ValueError("parts are missing")
    except (OSError, ValueError, SafetensorError) as e:  # cut short by a full disk, a copy broken on its way back
        raise ConfigError(f"{path}: the saved state to resume from cannot be read ({type(e).__name__}: {e}); "
                          f"delete that folder to run the {run_dir.name} stage from its start") from None
    load_trainable_state(student, {k[8:]: v for k, v in tensors.items() if k.startswith("student.")})
    if teacher is not None:
        load_trainable_state(teacher, {k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")})
    _unflatten_optimizer(opt, tensors, meta["optimizer"])
    if sched is not None and meta["scheduler"] is not None:
        sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["info"]
