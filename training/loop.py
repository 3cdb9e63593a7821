"""The one training loop of ddvlm. Every stage and every ablation is a configuration of ``fit``.

Stages (paper Sections 3.4-3.6, Table 2):
  text    EMA self-distillation of the text branch (or CE only: ``self_distillation: false``), in one of
          three modes: full fine-tuning (the paper's), LoRA, or frozen backbone (cached h_text, heads only).
          LoRA on the top layers can cache what the frozen layers below compute (``cache_frozen_layers``), and
          can go on from a checkpoint's adapter and head (``init_checkpoint``: training.init_from).
  visual  cross-modal KD from the trained, frozen text branch: L = CE + a L_resp + b L_feat
          (or CE only: ``cross_modal_kd: false``). Needs captions.
  fusion  residual gated fusion trained on the frozen branches (CE on the fused logits). Needs captions.
Model selection is on dev only; test is reported for the selected epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ddvlm_core import losses as L
from ddvlm_core.calibration import before_after, fit_temperature, manifest_entry
from ddvlm_core.asr_noise import unpunctuate
from ddvlm_core.assets import resolve_model
from ddvlm_core.context import PromptBuilder
from ddvlm_core.labels import NUM_LABELS
from ddvlm_core.meld import SPLITS, meld_dir
from ddvlm_core.model import DDVLM
from training.config import HOSTING_KEYS, ConfigError, TrainConfig, candidates, config_differences
from training.data import (UNPUNCTUATED, Example, batches, build_examples, check_full_test_split, collate,
                           punctuation_drops)
from ddvlm_core.metrics import confusion_png, metrics
from training.features import cached_features, cached_layer_states, extract
from training.init_from import init_problem, lora_backbone, record_start
from training.schedule import lr_factor
from training.state import (holds_state, load_state, load_trainable_state, recover_state, save_state,
                            trainable_state, trainable_state_like)

T = TypeVar("T")


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not running under torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(cfg: TrainConfig) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); (0, 1) without torchrun."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    return dist_info()


def barrier() -> None:
    import torch.distributed as dist

    if dist_info()[1] > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """``flag`` of every rank combined with OR, so that all ranks take the same branch (e.g. stop together)."""
    import torch.distributed as dist

    if dist_info()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def rank0_first(make: Callable[[], T]) -> T:
    """``make()`` on rank 0 first, then on the other ranks (which then read the cache rank 0 wrote)."""
    first = dist_info()[0] == 0
    if not first:
        barrier()
    value = make()
    if first:
        barrier()
    return value


def average_gradients(params: list[Tensor]) -> None:
    """Data parallelism: after backward, every rank holds the mean gradient of all ranks' batches."""
    import torch.distributed as dist

    world = dist_info()[1]
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one rank's epoch (dropout): a function of the run's seed, the epoch and the rank alone, so
    an epoch draws the same whether the run got there in one go or resumed after the epoch before, on a GPU too,
    and with any number of ranks. (The state's saved RNG is rank 0's CPU generator: a resumed GPU run drew other
    dropout masks, and so did every other rank of a resumed distributed one.)"""
    return (seed * 1000 + epoch) * 1000 + rank


@contextmanager
def deterministic_kernels(on: bool):
    """With ``on``: kernels that give the same result on every run while the block runs (cuBLAS with a fixed
    workspace, no atomics-based reductions, no cuDNN autotuning), so two runs of one seed match bit for bit on
    a GPU too. An op with no deterministic kernel warns instead of failing (warn_only). The previous settings
    are restored afterwards: ``run`` can be called in a process that does other work."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[3] or ":4096:8"  # read when cuBLAS starts: before any GPU op
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if before[3] is None:
            del os.environ["CUBLAS_WORKSPACE_CONFIG"]


def linear_warmup(opt: torch.optim.Optimizer, warmup: int, total: int):
    """get_linear_schedule_with_warmup (Section 4.2, named by the paper): linear rise over the warm-up steps, then
    linear decay to 0 (``training.schedule.lr_factor``)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total))


@dataclass
class Stage:
    """What ``fit`` trains: a student, how to get its logits and its loss for a batch of example indices."""

    name: str
    student: nn.Module
    logits: Callable[[nn.Module, str, list[int]], Tensor]
    loss: Callable[[nn.Module, "L.EMATeacher | None", list[int], Tensor, int], Tensor]
    lr: float
    ema: bool = False  # keep an EMA teacher of the student (self-distillation)
    train_indices: list[int] | None = None  # default: every train example
    temperature: str = ""  # the checkpoint's temperature this stage's kept model gives (DDVLMConfig field; "": none)
    calibration_rows: dict[str, Tensor] | None = None  # split -> the rows that temperature applies to (default all)


def fit(cfg: TrainConfig, stage: Stage, labels: dict[str, Tensor], lengths: dict[str, list[int]], out_dir: Path,
        log=print) -> dict:
    """The loop: AdamW + linear warm-up, clipping, EMA teacher update after every step, per-epoch dev/test
    evaluation, best-on-dev selection, resumable from ``out_dir/last`` after the epochs that saved it
    (``saves_state_after``: every epoch by default, and whenever the run stops). A run going on from a checkpoint
    (``init_checkpoint``) scores the start too ("start"), and says so when no epoch beat it on dev."""
    rank, world = dist_info()
    main_rank = rank == 0
    out_dir.mkdir(parents=True, exist_ok=True)
    student = stage.student
    params = [p for p in student.parameters() if p.requires_grad]
    # on a GPU one fused kernel updates every parameter (a step of small LoRA tensors is launch-bound)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=cfg.weight_decay,
                            fused=all(p.is_cuda for p in params) or None)
    train_idx = stage.train_indices if stage.train_indices is not None else list(range(len(labels["train"])))
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size) // world
    total = steps_per_epoch * cfg.epochs
    sched = linear_warmup(opt, int(cfg.warmup_ratio * total), total)
    teacher = L.EMATeacher(student, cfg.ema_decay) if stage.ema else None
    if main_rank:
        recover_state(out_dir)  # a state swap a kill cut short
    barrier()
    info = load_state(out_dir, student, teacher.model if teacher else None, opt, sched)
    if info:
        log(f"[{stage.name}] resumed after epoch {info['epoch']}")
        info["resumed_after"] = info["epoch"]  # the epochs up to here ran in an earlier call (their time: history)
    info = info or {"epoch": 0, "best": None, "history": []}
    if cfg.init_checkpoint and stage.name == "text" and "start" not in info:  # the score to beat: where it started
        info["start"] = headline_scores({s: evaluate(stage, s, labels[s], lengths[s], cfg.eval_batch_size)
                                         for s in ("dev", "test")})
        log(f"[{stage.name}] at the start ({cfg.init_checkpoint}): dev WA-F1 {info['start']['dev_wa_f1']:.2f}  "
            f"test WA-F1 {info['start']['test_wa_f1']:.2f}")
    started = time.monotonic()
    best_weights = None  # the best epoch's trainable weights, until they are written with the next saved state
    for epoch in range(info["epoch"] + 1, cfg.epochs + 1):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))  # CPU and every GPU: see epoch_seed
        student.train()
        plan = batches([lengths["train"][i] for i in train_idx], cfg.batch_size, shuffle=True,
                       seed=cfg.seed * 1000 + epoch, bucket=cfg.length_bucketing, megabatch=cfg.bucket_megabatch)
        plan = plan[rank::world][:steps_per_epoch]  # each rank its share, the same number of steps
        epoch_start = time.monotonic()
        running = torch.zeros(())
        bar = tqdm(plan, desc=f"{stage.name} epoch {epoch}/{cfg.epochs}", unit="batch", mininterval=10)
        for step, batch in enumerate(bar, 1):
            idx = [train_idx[i] for i in batch]
            loss = stage.loss(student, teacher, idx, labels["train"][idx], epoch)
            loss.backward()
            average_gradients(params)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if teacher is not None:
                teacher.update(student)
            running = running.to(loss.device) + loss.detach().float()  # no host sync per step
            if step % 50 == 0:
                bar.set_postfix(loss=f"{running.item() / step:.4f}")
        train_loss = running.item() / max(1, len(plan))  # also waits for the device: train time is complete
        train_seconds = time.monotonic() - epoch_start
        scores = {s: evaluate(stage, s, labels[s], lengths[s], cfg.eval_batch_size) for s in ("dev", "test")}
        # the EMA teacher is scored too; it is selected from only as cfg.sd_select says (default: the student)
        teacher_scores = {s: evaluate(stage, s, labels[s], lengths[s], cfg.eval_batch_size, teacher.model)
                          for s in ("dev", "test")} if teacher is not None else {}
        record = {"epoch": epoch, "train_loss": train_loss,
                  "train_seconds": round(train_seconds, 2),
                  "eval_seconds": round(time.monotonic() - epoch_start - train_seconds, 2), "train_steps": len(plan),
                  **headline_scores(scores),
                  **{f"teacher_{s}_wa_f1": teacher_scores[s]["wa_f1"] for s in teacher_scores}}
        info["history"].append(record)
        for kept, kept_scores in candidates(cfg.sd_select, scores, teacher_scores):
            if info["best"] is None or kept_scores["dev"]["wa_f1"] > info["best"]["dev_wa_f1"]:
                info["best"] = {**record, **headline_scores(kept_scores), "kept": kept,
                                "dev": kept_scores["dev"], "test": kept_scores["test"]}
                best_weights = None if not main_rank else (
                    trainable_state(student) if kept == "student" else trainable_state_like(teacher.model, student))
        info["epoch"] = epoch
        stop = epoch < cfg.epochs and any_rank(over_budget(time.monotonic() - started, time.monotonic() - epoch_start,
                                                           cfg.time_budget_min))  # ranks' clocks differ: stop together
        if main_rank and saves_state_after(epoch, cfg.epochs, cfg.state_every, stop):
            save_state(out_dir, student, teacher.model if teacher else None, opt, sched, info, best_weights)
            best_weights = None
        barrier()
        ema = (f"  (EMA teacher: dev {record['teacher_dev_wa_f1']:.2f}  test {record['teacher_test_wa_f1']:.2f})"
               if teacher_scores else "")
        log(f"[{stage.name}] epoch {epoch}: loss {record['train_loss']:.4f}  dev WA-F1 {record['dev_wa_f1']:.2f}  "
            f"test WA-F1 {record['test_wa_f1']:.2f}{ema}  ({time.monotonic() - started:.0f}s)")
        if stop:
            log(f"[{stage.name}] time budget of {cfg.time_budget_min} min: stopping after epoch {epoch} of "
                f"{cfg.epochs}, the learning rate still at {sched.get_last_lr()[0] / stage.lr:.0%} of its peak "
                f"(the schedule decays it to 0 at epoch {cfg.epochs}; --epochs={epoch} would have finished it)")
            info["stopped_early"] = epoch
            break
    from safetensors.torch import load_file, save_file

    if world > 1:  # evidence that data parallelism kept every rank's weights identical
        save_file(trainable_state(student), out_dir / f"final_rank{rank}.safetensors")
    barrier()
    load_trainable_state(student, load_file(out_dir / "best.safetensors"))
    start = info.get("start")
    if start and info["best"] and start["dev_wa_f1"] >= info["best"]["dev_wa_f1"]:
        info["start_was_better"] = True  # on dev: selection kept the best epoch, which is no better than the start
        log(f"[{stage.name}] no epoch beat the start on dev (dev WA-F1 {start['dev_wa_f1']:.2f} at the start, "
            f"{info['best']['dev_wa_f1']:.2f} at epoch {info['best']['epoch']}): {cfg.init_checkpoint} as it was is "
            "the better model on this dev")
    if main_rank and stage.temperature and cfg.calibrate:
        info["calibration"] = calibrate_stage(stage, labels, lengths, cfg.eval_batch_size)
        if "temperature" in info["calibration"]:
            c = info["calibration"]
            log(f"[{stage.name}] confidence: temperature {c['temperature']:.3f} fitted on dev; test ECE "
                f"{c['test']['as_trained']['ece']:.2f}% -> {c['test']['calibrated']['ece']:.2f}%"
                if c["test"]["n"] else f"[{stage.name}] confidence: temperature {c['temperature']:.3f} fitted on dev")
    if main_rank:
        (out_dir / "result.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def headline_scores(scores: dict) -> dict:
    """{"dev_wa_f1": .., "dev_macro_f1": .., "dev_accuracy": .., "test_...": ..} of a model's per-split metrics."""
    return {f"{split}_{k}": scores[split][k] for split in scores for k in ("wa_f1", "macro_f1", "accuracy")}


def saves_state_after(epoch: int, epochs: int, every: int, stopping: bool) -> bool:
    """Whether the resume state (and the best weights so far) is written after ``epoch``: every ``every``
    epochs (0: never in between), and always when the run stops, at its last epoch or for its time budget.
    A full fine-tune's state is the whole backbone twice (student, EMA teacher) plus AdamW's moments: 1.7 GB."""
    return stopping or epoch == epochs or (every > 0 and epoch % every == 0)


def over_budget(elapsed_s: float, last_epoch_s: float, budget_min: float) -> bool:
    """True when another epoch as long as the last one would end past the time budget (0: no budget)."""
    return budget_min > 0 and elapsed_s + last_epoch_s > 60 * budget_min


@torch.inference_mode()
def split_logits(stage: Stage, split: str, lengths: list[int], batch_size: int,
                 model: nn.Module | None = None) -> Tensor:
    """Logits (N, C), fp32 on the CPU, of ``model`` (default: the stage's student) for every example of a split,
    in example order (batches by length)."""
    model = model if model is not None else stage.student
    model.eval()
    out = torch.empty(len(lengths), NUM_LABELS)
    # a bar with an ETA, erased when done: a fine-tuned backbone's dev and test take minutes on a CPU, twice with SD
    plan = batches(lengths, batch_size, shuffle=False, seed=0)
    for idx in tqdm(plan, desc=f"{stage.name} eval {split}", unit="batch", mininterval=10, leave=False):
        out[idx] = stage.logits(model, split, idx).float().cpu()
    return out


def predict_split(stage: Stage, split: str, lengths: list[int], batch_size: int,
                  model: nn.Module | None = None) -> Tensor:
    """Argmax predictions of ``model`` (default: the stage's student) for every example of a split, in
    example order."""
    return split_logits(stage, split, lengths, batch_size, model).argmax(-1)


def calibrate_stage(stage: Stage, labels: dict[str, Tensor], lengths: dict[str, list[int]], batch_size: int) -> dict:
    """The temperature of the stage's student (its kept weights), fitted on dev (ddvlm_core.calibration), and the
    NLL, ECE and mean confidence of dev and test before (T = 1) and after, on the rows the temperature applies
    to (``stage.calibration_rows``; default all)."""
    rows = stage.calibration_rows or {}
    scored = {}
    for split in ("dev", "test"):
        logits = split_logits(stage, split, lengths[split], batch_size)
        keep = rows.get(split)
        scored[split] = (logits, labels[split]) if keep is None else (logits[keep], labels[split][keep])
    if len(scored["dev"][1]) == 0:
        return {"skipped": "no dev example to fit on"}
    temperature = fit_temperature(*scored["dev"])
    return {"temperature": temperature, "fitted_on": "dev",
            **{split: before_after(logits, gold, temperature, keys=("nll", "ece", "mean_confidence"))
               for split, (logits, gold) in scored.items()}}


def evaluate(stage: Stage, split: str, gold: Tensor, lengths: list[int], batch_size: int,
             model: nn.Module | None = None) -> dict:
    """The split's metrics and its predictions (in example order: to compare two runs on the same utterances)."""
    predictions = predict_split(stage, split, lengths, batch_size, model).numpy()
    return metrics(gold.numpy(), predictions) | {"predictions": predictions.tolist()}


# ---- stages -------------------------------------------------------------------------------------


def text_stage(cfg: TrainConfig, model: DDVLM, tok, data: dict[str, list[Example]], log) -> Stage:
    """Build the text stage for the configured mode."""
    device = cfg.device
    path = resolve_model(cfg.text_backbone)
    splits = (*SPLITS, UNPUNCTUATED) if UNPUNCTUATED in data else SPLITS
    if cfg.text_mode == "frozen":
        feats = rank0_first(lambda: {s: cached_features(model.text, data[s], tok.pad_token_id, cfg.feature_cache,
                                                        path, cfg.eval_batch_size, device, log).to(device)
                                     for s in splits})
        for p in model.text.backbone.parameters():
            p.requires_grad_(False)
        student = nn.Sequential(model.text.dropout, model.text.head).to(device)

        def logits(m, split, idx, plain=None):
            x = feats[split][idx]
            if plain is not None:  # punctuation_dropout: these prompts' unpunctuated features instead
                x = torch.where(plain.to(device)[:, None], feats[UNPUNCTUATED][idx], x)
            return m(x)
        lr = cfg.head_lr
    else:
        adapter = ""  # what the frozen layers' cache is keyed by besides the backbone: a checkpoint's adapter
        if cfg.text_mode == "lora":
            adapter = lora_backbone(cfg, model, tok, log)
            if adapter and dist_info()[0] == 0:
                record_start(cfg.run_dir, cfg, adapter)
        student = model.text.to(device)
        autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16)
        if cfg.cache_frozen_layers:
            start = min(cfg.lora_layers)
            states = rank0_first(lambda: {s: cached_layer_states(model.text, data[s], tok.pad_token_id, start,
                                                                 cfg.feature_cache, path, cfg.eval_batch_size,
                                                                 device, log, adapter) for s in splits})

            def logits(m, split, idx, plain=None):
                x, mask, index = (t.to(device) for t in states[split].batch(idx, states.get(UNPUNCTUATED), plain))
                with autocast:
                    return m.classify(m.encode_from_layer(x, mask, index, start)).float()
        else:
            def logits(m, split, idx, plain=None):
                rows = [data[UNPUNCTUATED if plain is not None and plain[k] else split][i] for k, i in enumerate(idx)]
                ids, mask, _ = collate(rows, tok.pad_token_id)
                with autocast:
                    return m(ids.to(device), mask.to(device)).logits.float()
        lr = cfg.lr

    drops = {}  # epoch -> the training prompts that go unpunctuated in it (punctuation_dropout)

    def loss(m, teacher, idx, y, epoch):
        plain = None
        if UNPUNCTUATED in data:
            if epoch not in drops:
                drops.clear()
                drops[epoch] = punctuation_drops(cfg.seed, epoch, len(data["train"]), cfg.punctuation_dropout)
            plain = drops[epoch][idx]
        z_s = logits(m, "train", idx, plain)
        y = y.to(z_s.device)
        if teacher is None:
            return L.classification_loss(z_s, y)
        z_t = None
        if epoch >= 2:  # epoch 1 is CE only, so the teacher is not even run
            with torch.no_grad():
                z_t = logits(teacher.model, "train", idx, plain)  # the same prompts as the student's
        return L.self_distillation_loss(z_s, z_t, y, epoch, cfg.sd_alpha, cfg.sd_tau)

    return Stage("text", student, logits, loss, lr, ema=cfg.self_distillation, temperature="text_temperature")


def build_data(cfg: TrainConfig, tok) -> dict[str, list[Example]]:
    builder = PromptBuilder(tok, cfg.max_tokens, cfg.speaker_tokens)
    data = {s: build_examples(s, builder, cfg.meld_dir, cfg.limit_dialogues) for s in SPLITS}
    if cfg.punctuation_dropout:
        data[UNPUNCTUATED] = build_examples("train", builder, cfg.meld_dir, cfg.limit_dialogues, text_of=unpunctuate)
    if cfg.corpus == "meld" and not cfg.limit_dialogues:
        check_full_test_split(data["test"])
    return data


def resume_status(cfg: TrainConfig) -> str:
    """What a run of ``cfg`` would do with its run directory, in words: "starts afresh", or "resumes the saved text
    state"; ConfigError when the directory holds another configuration's state (``refuse_other_runs_state``)."""
    run_dir = Path(cfg.run_dir)
    refuse_other_runs_state(run_dir, cfg)
    upstream = [stage for stage in stages_to_run(cfg) if stage not in cfg.stages]
    saved = [stage for stage in cfg.stages if holds_state(run_dir / stage)]
    status = f"resumes the saved {', '.join(saved)} state" if saved else "starts afresh"
    return status + (f", on the finished {' and '.join(upstream)} stage{'s' * (len(upstream) > 1)}" if upstream else "")


STAGE_ORDER = ("text", "visual", "fusion")


def stages_to_run(cfg: TrainConfig) -> tuple[str, ...]:
    """``cfg.stages`` and the earlier stages they build on, in order: the visual stage distils from the text branch
    and the fusion fuses both (and every checkpoint carries the text head). One command per stage: an earlier
    stage not in ``cfg.stages`` must have finished in ``run_dir`` in an earlier call, and is loaded from there (its
    best weights, through its saved state: nothing is trained again). ConfigError before any work otherwise: a
    visual stage run on its own used to distil from an untrained text head and ship it."""
    run_dir = Path(cfg.run_dir)
    needed = {"text"} | ({"visual"} if "fusion" in cfg.stages and cfg.caption_source != "none" else set())
    stages = tuple(s for s in STAGE_ORDER if s in needed | set(cfg.stages))
    for stage in [s for s in stages if s not in cfg.stages]:
        result = run_dir / stage / "result.json"
        epoch = json.loads(result.read_text(encoding="utf-8")).get("epoch", 0) if result.is_file() else 0
        if epoch < cfg.epochs or not holds_state(run_dir / stage):
            done = ("has not run" if not epoch else f"stopped after epoch {epoch} of {cfg.epochs}"
                    if epoch < cfg.epochs else "finished without its saved state (last/)")
            raise ConfigError(f"stages {','.join(cfg.stages)} build on the {stage} stage, which {done} in run_dir "
                              f"{str(run_dir)!r}: run --stages={stage} there first (or --stages={','.join(stages)} "
                              "in one call)")
    return stages


def write_atomically(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file and a rename: a reader sees the old file or the new one whole,
    never one being written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def refuse_other_runs_state(run_dir: Path, cfg: TrainConfig) -> None:
    """A run resumes from the state its directory holds; a directory holding the state of a run of another
    configuration is refused (resuming would mix two runs). Where it ran (HOSTING_KEYS) may differ."""
    saved = run_dir / "config.json"
    if not saved.is_file() or not any(holds_state(run_dir / stage) for stage in STAGE_ORDER):
        return
    # a call may run other stages (one command per stage): ``stages_to_run`` checks the ones they build on
    differ = config_differences(json.loads(saved.read_text(encoding="utf-8")), cfg.to_dict(),
                                (*HOSTING_KEYS, "stages"))
    if differ:
        raise ConfigError(f"run_dir {str(run_dir)!r} holds the state of a run with other {', '.join(differ)}: "
                          "give another run_dir, or delete it to start again")


def preflight(cfg: TrainConfig) -> None:
    """What can be checked before any work starts: the backbone and, for the multimodal stages, the captions and
    their embedder exist locally, MELD's folder exists, the device is there. ConfigError naming the problem."""
    from transformers import AutoConfig

    from ddvlm_core.lora import check_lora_settings
    from ddvlm_core.text import check_prompt_fits
    from training.captions import require_caption_source

    needs_captions = bool({"visual", "fusion"} & set(cfg.stages)) and cfg.caption_source != "none"
    try:
        backbone = resolve_model(cfg.text_backbone)
        backbone_config = AutoConfig.from_pretrained(backbone, trust_remote_code=False)
        check_prompt_fits(cfg.max_tokens, backbone_config, backbone)
        if cfg.text_mode == "lora" and "text" in cfg.stages:
            check_lora_settings(backbone_config, cfg.lora_settings())
        if needs_captions:
            resolve_model(cfg.caption_embedder)
            require_caption_source(cfg.caption_source)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if cfg.init_checkpoint and "text" in cfg.stages and (problem := init_problem(cfg)):
        raise ConfigError(problem)
    if cfg.meld_dir and not Path(cfg.meld_dir).is_dir():
        raise ConfigError(f"meld_dir {cfg.meld_dir!r}: no such folder (leave it empty for the repository's data/meld)")
    folder = Path(cfg.meld_dir) if cfg.meld_dir else meld_dir()
    missing = [f"{split}_sent_emo.csv" for split in SPLITS if not (folder / f"{split}_sent_emo.csv").is_file()]
    if missing:
        raise ConfigError(f"meld_dir {str(folder)!r}: no {', '.join(missing)} (MELD's annotation CSVs) in it")
    corpus_problem = check_corpus(folder, cfg.corpus)
    if corpus_problem:
        raise ConfigError(corpus_problem)
    try:
        torch.device(cfg.device)
    except RuntimeError:
        raise ConfigError(f"device {cfg.device!r}: not a torch device (cpu, cuda, cuda:1 ...)") from None
    if cfg.device.startswith("cuda"):
        index = cfg.device.partition(":")[2]
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count or (index.isdigit() and int(index) >= count):
            raise ConfigError(f"device {cfg.device!r}: this machine has {count} CUDA device(s)"
                              + (" (use device: cpu)" if not count else ""))


def check_corpus(folder: Path, corpus: str) -> str:
    """What keeps the CSVs in ``folder`` from being trained on as ``corpus`` ('' if nothing): MELD's splits must be
    MELD's whole (a copy whose train or dev was cut short would train and be reported as MELD; its test was refused
    only once the backbone had loaded); your own corpus's rows must read, and each split must have a labelled
    utterance to score."""
    from ddvlm_core.meld import SPLIT_SIZES, UNLABELLED, max_context_turns, read_split

    try:
        max_context_turns(folder)  # its corpus.json, if any, reads
    except ValueError as e:
        return str(e)
    for split in SPLITS:
        try:
            rows = read_split(split, folder)
        except ValueError as e:
            return str(e)
        labelled = sum(r.label != UNLABELLED for r in rows)
        if corpus == "meld" and len(rows) != SPLIT_SIZES[split]:
            return (f"meld_dir {str(folder)!r}: {split} has {len(rows)} utterances, MELD's {SPLIT_SIZES[split]} "
                    "(a corpus of your own: corpus: own)")
        if corpus == "own" and not labelled:
            return f"meld_dir {str(folder)!r}: {split}_sent_emo.csv has no utterance with an Emotion to score"
    return ""


def hardware(device: str) -> str:
    """What trained the run, for its reports: the GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or torch.cuda.current_device())
        return torch.cuda.get_device_name(index)
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    except OSError:
        models = []
    return f"{models[0] if models else 'CPU'}, {os.cpu_count()} cores"


def run(cfg: TrainConfig, log=print) -> dict:
    """Train the configured stages; write the run directory; return the results."""
    with deterministic_kernels(cfg.deterministic):
        return run_stages(cfg, log)


def run_stages(cfg: TrainConfig, log=print) -> dict:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rank, world = init_distributed(cfg)
    if rank != 0:
        log = lambda *_: None  # noqa: E731 - one rank reports
    seed_everything(cfg.seed)  # the same initial weights on every rank
    run_dir = Path(cfg.run_dir)
    preflight(cfg)
    refuse_other_runs_state(run_dir, cfg)
    cfg = dataclasses.replace(cfg, stages=stages_to_run(cfg))  # with the finished stages they build on
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # whole or not at all: another rank may be reading the earlier call's (refuse_other_runs_state)
        write_atomically(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1))
    model, tok = DDVLM.from_backbone(cfg.model_config())
    data = build_data(cfg, tok)
    labels = {s: torch.tensor([e.label for e in data[s]]) for s in SPLITS}
    lengths = {s: [len(e.input_ids) for e in data[s]] for s in SPLITS}
    log("data: " + ", ".join(f"{s} {len(data[s])}" for s in SPLITS) + f"; text mode {cfg.text_mode}, "
        f"self-distillation {'on' if cfg.self_distillation else 'off'}, captions: {cfg.caption_source}"
        + (f"; each epoch {cfg.punctuation_dropout:.0%} of the training prompts unpunctuated"
           if cfg.punctuation_dropout else ""))
    results: dict = {"config": cfg.to_dict(), "hardware": hardware(cfg.device), "stages": {},
                     "test_examples": {"gold": labels["test"].tolist(),  # the order of the stages' test predictions
                                       "dialogues": [e.dialogue_id for e in data["test"]]}}
    modules = ["text_head"]
    if "text" in cfg.stages:
        stage = text_stage(cfg, model, tok, data, log)
        results["stages"]["text"] = fit(cfg, stage, labels, lengths, run_dir / "text", log)
        if cfg.text_mode == "lora":
            modules.append("backbone_lora")
        elif cfg.text_mode == "full":
            modules.append("backbone")
    if {"visual", "fusion"} & set(cfg.stages):
        if cfg.caption_source == "none":
            msg = ("no captions (caption_source: none; MELD videos are not on this machine): visual and fusion "
                   "stages skipped, the checkpoint is text-only")
            log(msg)
            results["stages"]["visual"] = results["stages"]["fusion"] = {"skipped": msg}
        else:
            stages, results["captions"] = multimodal_stages(cfg, model, tok, data, labels, run_dir, log)
            results["stages"].update(stages)
            if not any("skipped" in stage for stage in stages.values()):
                modules += ["visual_head", "fusion"]
    model.text.backbone.eval()
    if rank == 0:
        confusion_pngs(results["stages"], run_dir)
        captioner = {"captioner": results["captions"]["captioner"]} if "visual_head" in modules else {}
        calibration = apply_fitted_temperatures(model, results["stages"], modules,
                                                fitted_on="MELD dev" if cfg.corpus == "meld" else f"{cfg.meld_dir} dev")
        model.save(run_dir / "checkpoint", tuple(modules),
                   extra={"trained_by": "training.loop", "run": cfg.to_dict(), **captioner, **calibration})
        (run_dir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    barrier()
    return results


def apply_fitted_temperatures(model: DDVLM, stages: dict, modules: list[str], fitted_on: str = "MELD dev") -> dict:
    """Set the checkpoint config's "text_temperature" and "fused_temperature" to those the stages fitted (the fused
    one only when the checkpoint ships the fusion); returns the manifest's ``{"calibration": entry}`` ({} when no
    stage fitted one), which says what they were ``fitted_on``."""
    fitted = {}
    for stage, field in (("text", "text_temperature"), ("fusion", "fused_temperature")):
        temperature = stages.get(stage, {}).get("calibration", {}).get("temperature")
        if temperature is not None and (stage == "text" or "fusion" in modules):
            fitted[field] = temperature
            setattr(model.config, field, temperature)
    return {"calibration": manifest_entry(fitted, fitted_on=fitted_on)} if fitted else {}


def confusion_pngs(stages: dict, run_dir: Path) -> None:
    """confusion_{stage}_{split}.png of every trained stage's dev-selected model (text, visual, fusion)."""
    for name, result in stages.items():
        for split in ("dev", "test") if "best" in result else ():
            best = result["best"]
            confusion_png(best[split]["confusion"], run_dir / f"confusion_{name}_{split}.png",
                          f"{name} {'branch' if name != 'fusion' else 'output'}, {split}: "
                          f"WA-F1 {best[split]['wa_f1']:.2f}")


def multimodal_stages(cfg, model, tok, data, labels, run_dir, log) -> tuple[dict, dict]:
    """The visual (CMKD from the trained text branch) and fusion stages on the captions of ``cfg.caption_source``:
    (their results, the report of the captions used)."""
    from training.captions import caption_embeddings

    emb, has, captions = caption_embeddings(cfg, data, log)
    train_with_caption = [i for i in range(len(data["train"])) if bool(has["train"][i])]
    if not train_with_caption:  # nothing to train the visual head on: no visual or fusion weights are shipped
        msg = (f"no train example has a usable caption in {cfg.caption_source} (see the counts above): visual and "
               "fusion stages skipped, the checkpoint is text-only")
        log(msg)
        return {"visual": {"skipped": msg}, "fusion": {"skipped": msg}}, captions
    model.text.eval()
    with torch.no_grad():
        h_text = {s: extract(model.text, data[s], tok.pad_token_id, cfg.eval_batch_size, cfg.device,
                             f"teacher h_text {s}").to(cfg.device) for s in SPLITS}
        z_text = {s: model.text.classify(h_text[s]) for s in SPLITS}
    out = {}
    lengths = {s: [1] * len(data[s]) for s in SPLITS}
    visual = model.visual.to(cfg.device)

    def visual_logits(m, split, idx):
        return m(emb[split][idx].to(cfg.device)).logits

    def visual_loss(m, _teacher, idx, y, _epoch):
        o = m(emb["train"][idx].to(cfg.device))
        y = y.to(cfg.device)
        if not cfg.cross_modal_kd:
            return L.classification_loss(o.logits, y)
        return L.visual_student_loss(o.logits, y, z_text["train"][idx], h_text["train"][idx], o.hidden,
                                     cfg.cmkd_alpha, cfg.cmkd_beta, cfg.response_tau, cfg.feature_tau, cfg.lambda_jsd)

    if "visual" in cfg.stages:
        out["visual"] = fit(cfg, Stage("visual", visual, visual_logits, visual_loss, cfg.head_lr,
                                       train_indices=train_with_caption), labels, lengths, run_dir / "visual", log)
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    fusion = model.fusion.to(cfg.device)

    def fused_logits(m, split, idx):
        with torch.no_grad():
            v = visual(emb[split][idx].to(cfg.device))
        return m(h_text[split][idx], z_text[split][idx], v.hidden, v.logits, has[split][idx].to(cfg.device)).logits

    def fusion_loss(m, _teacher, idx, y, _epoch):
        return L.classification_loss(fused_logits(m, "train", idx), y.to(cfg.device))

    if "fusion" in cfg.stages:
        out["fusion"] = fit(cfg, Stage("fusion", fusion, fused_logits, fusion_loss, cfg.head_lr,
                                       temperature="fused_temperature", calibration_rows=has), labels, lengths,
                            run_dir / "fusion", log)
    return out, captions


__all__ = ["fit", "run", "Stage", "linear_warmup"]
