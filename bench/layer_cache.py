"""What caching the frozen layers saves a CPU LoRA fine-tune (``cache_frozen_layers``), measured in one run.

    python bench/layer_cache.py [--config training/configs/lora_cpu.yaml] [--steps 8] [--dialogues 60]

The real embedded MPNet with the config's LoRA layers, the same MELD train batches (batch_size of the config,
length-bucketed as the loop draws them) through the loop's own text stage, once running the whole backbone
every step and once from the cached states entering the lowest adapted layer: seconds per self-distillation
step (student forward + backward + AdamW + EMA teacher forward and update) and per dev evaluation batch.
The states are extracted for the first ``--dialogues`` dialogues of each split (timed as the one-off cost).
Writes reports/layer_cache.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from statistics import mean
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def time_stage(cfg, steps: int, log) -> dict:
    """Seconds per SD training step and per dev evaluation batch of the loop's text stage under ``cfg``."""
    import torch

    from ddvlm_core import losses as L
    from ddvlm_core.model import DDVLM
    from training.data import batches
    from training.loop import build_data, seed_everything, text_stage

    seed_everything(cfg.seed)
    model, tok = DDVLM.from_backbone(cfg.model_config())
    data = build_data(cfg, tok)
    t0 = time.monotonic()
    stage = text_stage(cfg, model, tok, data, log)
    setup_s = time.monotonic() - t0
    student = stage.student
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    teacher = L.EMATeacher(student, cfg.ema_decay)
    labels = torch.tensor([e.label for e in data["train"]])
    plan = batches([len(e.input_ids) for e in data["train"]], cfg.batch_size, shuffle=True, seed=1)[: steps + 1]
    student.train()
    times = []
    for idx in plan:  # the first step warms up and is not counted
        start = time.monotonic()
        loss = stage.loss(student, teacher, idx, labels[idx], 2)  # epoch 2: the teacher runs too
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        teacher.update(student)
        times.append(time.monotonic() - start)
    student.eval()
    dev = batches([len(e.input_ids) for e in data["dev"]], cfg.eval_batch_size, shuffle=False, seed=0)[: steps + 1]
    evals = []
    with torch.inference_mode():
        for idx in dev:
            start = time.monotonic()
            stage.logits(student, "dev", idx)
            evals.append(time.monotonic() - start)
    counted = plan[1:] or plan  # a split of one batch: that batch, warm-up included
    tokens = sum(len(data["train"][i].input_ids) for idx in counted for i in idx)
    return {"setup_s": setup_s, "step_s": mean(times[1:] or times), "eval_batch_s": mean(evals[1:] or evals),
            "steps": len(counted), "tokens_per_step": tokens / len(counted), "prompts": {s: len(data[s]) for s in data}}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "configs" / "lora_cpu.yaml"),
                    help="a LoRA config with lora_layers above layer 0")
    ap.add_argument("--steps", type=int, default=8, help="training steps timed each way")
    ap.add_argument("--dialogues", type=int, default=60, help="dialogues per split whose states are extracted")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where layer_cache.{md,json} go")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.dialogues < 1:
        ap.error("--steps and --dialogues must be >= 1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    import torch

    from training.config import load_config

    try:
        cfg = load_config(args.config, [f"--limit_dialogues={args.dialogues}"])
    except (OSError, ValueError, TypeError) as e:
        ap.error(f"--config: {e}")
    if not cfg.lora_layers or not min(cfg.lora_layers):
        ap.error("--config: needs text_mode lora with lora_layers above layer 0")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="layer-cache-") as cache:  # the cold cache is part of what is timed
        for name, cached in (("whole backbone", False), ("cached frozen layers", True)):
            rows[name] = time_stage(replace(cfg, cache_frozen_layers=cached, feature_cache=cache), args.steps, print)
            print(f"{name}: {rows[name]['step_s']:.2f} s per step, {rows[name]['eval_batch_s']:.2f} s per eval "
                  "batch", flush=True)
    whole, cached = rows["whole backbone"], rows["cached frozen layers"]
    start = min(cfg.lora_layers)
    result = {"config": args.config, "steps": args.steps, "dialogues": args.dialogues, "batch_size": cfg.batch_size,
              "eval_batch_size": cfg.eval_batch_size, "lora_layers": list(cfg.lora_layers),
              "threads": torch.get_num_threads(), "rows": rows,
              "step_ratio": cached["step_s"] / whole["step_s"],
              "eval_ratio": cached["eval_batch_s"] / whole["eval_batch_s"]}
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layer_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    n_prompts = sum(cached["prompts"].values())
    lines = ["# Caching the frozen layers of a CPU LoRA fine-tune", "",
             f"`python bench/layer_cache.py --steps {args.steps} --dialogues {args.dialogues}`; config "
             f"`{Path(args.config).name}` (LoRA on layers {', '.join(map(str, cfg.lora_layers))}, batch "
             f"{cfg.batch_size}), all-mpnet-base-v2, {torch.get_num_threads()} CPU threads, one run. A step is "
             f"a self-distillation step (student forward + backward, AdamW, EMA teacher forward and update) on the "
             f"same {whole['steps']} MELD train batches ({whole['tokens_per_step']:.0f} tokens each on average).", "",
             "| | s per SD step | s per dev batch of " f"{cfg.eval_batch_size} | one-off |",
             "|---|---|---|---|",
             f"| whole backbone every step | {whole['step_s']:.2f} | {whole['eval_batch_s']:.2f} | — |",
             f"| layers {start}+ on cached states | {cached['step_s']:.2f} | {cached['eval_batch_s']:.2f} | "
             f"{cached['setup_s']:.0f} s: layers 0-{start - 1} on {n_prompts} prompts |",
             f"| ratio | {result['step_ratio']:.2f}x | {result['eval_ratio']:.2f}x | |", "",
             "The cached run's frozen layers drop nothing out (they ran once, in eval mode); otherwise the two "
             "compute the same model (test/test_layer_cache.py)."]
    (out / "layer_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
