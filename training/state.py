"""Resumable training state in safetensors + JSON (nothing unpicklable): trainable weights, EMA teacher,
optimizer and scheduler state, RNG state, epoch and best-so-far."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from training.config import ConfigError

STATE_DIR = "last"
BEST = "best.safetensors"  # the best epoch's trainable weights, in the state and published beside it


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
               info: dict, best: dict[str, torch.Tensor] | None = None) -> None:
    """Replace run_dir/last with the state after a finished epoch, together with the best weights so far
    (``best``: new ones; None: those of the state it replaces), then publish those as run_dir/best.safetensors.

    A kill at any moment leaves a state whose best weights are the ones its ``info["best"]`` names: the new state
    is written whole into last.tmp (state.json last), then renames swap it in (``recover_state`` finishes a swap
    a kill cut short)."""
    recover_state(run_dir)
    final, tmp, old = _state_dirs(run_dir)
    for leftover in (tmp, old):  # a state a kill left half-written, or the one a finished swap replaced
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"student.{k}": v for k, v in trainable_state(student).items()}
    if teacher is not None:
        tensors |= {f"teacher.{k}": v for k, v in trainable_state_like(teacher, student).items()}
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors |= opt_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "state.safetensors")
    # no new best: the replaced state's (or, in a run directory older than states holding them, the published)
    previous = next((path for path in (final / BEST, run_dir / BEST) if path.is_file()), None)
    if best is not None:
        save_file(best, tmp / BEST)
    elif previous is not None:
        _link_or_copy(previous, tmp / BEST)
    meta = {"info": info, "optimizer": opt_meta, "scheduler": sched.state_dict() if sched else None}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    publish_best(run_dir)


def _state_dirs(run_dir: Path) -> tuple[Path, Path, Path]:
    """run_dir/last, the new state being written (last.tmp) and the one being replaced (last.old)."""
    return run_dir / STATE_DIR, run_dir / (STATE_DIR + ".tmp"), run_dir / (STATE_DIR + ".old")


def holds_state(run_dir: Path) -> bool:
    """Whether a run resuming in run_dir finds a saved state: run_dir/last, or a whole one that a kill left
    mid-swap (``recover_state`` makes it run_dir/last)."""
    final, tmp, old = _state_dirs(run_dir)
    return final.is_dir() or any((d / "state.json").is_file() for d in (tmp, old))


def recover_state(run_dir: Path) -> None:
    """Finish a swap of states that a kill cut short: with no run_dir/last, the whole new state (last.tmp with its
    state.json) becomes it, else the one it was replacing (last.old); then publish its best weights."""
    final, tmp, old = _state_dirs(run_dir)
    if not (final / "state.json").is_file():
        for candidate in (tmp, old):
            if (candidate / "state.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(candidate, final)
                break
    publish_best(run_dir)


def publish_best(run_dir: Path) -> None:
    """run_dir/best.safetensors (what export, evaluation and the end of a run read) := the saved state's best
    weights, replaced whole (a hard link where the file system allows; nothing writes either file in place)."""
    source, published, tmp = run_dir / STATE_DIR / BEST, run_dir / BEST, run_dir / (BEST + ".tmp")
    tmp.unlink(missing_ok=True)  # a publication a kill cut short
    if not source.is_file() or (published.is_file() and os.path.samefile(source, published)):
        return  # (renaming a hard link onto another name of the same file would do nothing and keep the first)
    _link_or_copy(source, tmp)
    os.replace(tmp, published)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a new name of ``source``, or a new copy: never a write into an existing file."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def trainable_state_like(teacher: torch.nn.Module, student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's copies of the student's trainable parameters (the teacher itself has no grads)."""
    names = {k for k, v in student.named_parameters() if v.requires_grad}
    return {k: v.detach().clone() for k, v in teacher.named_parameters() if k in names}


def load_state(run_dir: Path, student, teacher, opt, sched) -> dict | None:
    """Restore run_dir/last into the given objects; returns its info dict, or None if there is none. (One process
    calls ``recover_state`` first: every rank of a distributed run reads the same state.)"""
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
