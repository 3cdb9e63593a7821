"""Export a checkpoint from a run directory's best-on-dev weights, e.g. after an interrupted run: the text branch,
and the visual head and the fusion when both of those stages have best weights there (a run on captions).

    python -m training.export RUN_DIR [OUT_DIR] [--force]      (default OUT_DIR: RUN_DIR/checkpoint)

A directory that already holds a checkpoint (e.g. checkpoints/default) is not overwritten without --force.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from ddvlm_core.model import DDVLM
from training.config import TrainConfig
from training.init_from import check_same_start, lora_backbone
from training.loop import apply_fitted_temperatures
from training.state import BEST, load_trainable_state, recover_state


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    for stage in ("text", "visual", "fusion"):  # a run killed while saving: its whole state, best published
        recover_state(run_dir / stage)
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    model, tokenizer = DDVLM.from_backbone(cfg.model_config())
    best = load_file(run_dir / "text" / "best.safetensors")
    modules = ["text_head"]
    if cfg.text_mode == "lora":
        adapter = lora_backbone(cfg, model, tokenizer, log=lambda *_: None)
        if cfg.init_checkpoint:  # the run went on from a checkpoint's adapter: its frozen layers are that one's
            check_same_start(run_dir, adapter)
        load_trainable_state(model.text, best)
        modules.append("backbone_lora")
    elif cfg.text_mode == "frozen":
        load_trainable_state(model.text.head, {k.split(".", 1)[1]: v for k, v in best.items()})
    else:
        load_trainable_state(model.text, best)
        modules.append("backbone")
    result = json.loads((run_dir / "text" / "last" / "state.json").read_text())["info"]
    best_scores = {k: ({m: v for m, v in x.items() if m != "predictions"} if isinstance(x, dict) else x)
                   for k, x in result["best"].items()}  # the manifest keeps the scores, not every answer
    extra = {"trained_by": "training.export", "run": cfg.to_dict(), "text_best": best_scores}
    if all((run_dir / stage / BEST).is_file() for stage in ("visual", "fusion")):  # else a text-only checkpoint
        load_trainable_state(model.visual, load_file(run_dir / "visual" / BEST))
        load_trainable_state(model.fusion, load_file(run_dir / "fusion" / BEST))
        modules += ["visual_head", "fusion"]
        from training.captions import captioner_of, read_captions

        extra["captioner"] = captioner_of(read_captions(cfg.caption_source))  # the node compares its captioner
    # the temperatures the run fitted on dev (result.json: written when a stage finished, with its best weights)
    stages = {stage: json.loads((run_dir / stage / "result.json").read_text())
              for stage in ("text", "fusion") if (run_dir / stage / "result.json").is_file()}
    extra |= apply_fitted_temperatures(model, stages, modules)
    return model.save(out or run_dir / "checkpoint", tuple(modules), extra=extra)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a training run directory (holds text/best.safetensors)")
    ap.add_argument("out_dir", nargs="?", help="where the checkpoint goes (default: RUN_DIR/checkpoint)")
    ap.add_argument("--force", action="store_true", help="replace a checkpoint already in OUT_DIR")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    out = Path(args.out_dir) if args.out_dir else run_dir / "checkpoint"
    recover_state(run_dir / "text")  # before the check below: a run killed while saving has its best weights
    if not (run_dir / "text" / "best.safetensors").is_file():
        ap.error(f"{run_dir}: no text/best.safetensors (not a training run directory, or no epoch finished yet)")
    if (out / "manifest.json").is_file() and not args.force:
        ap.error(f"{out} holds a checkpoint already; --force replaces it")
    try:
        print(export(run_dir, out))
    except (ValueError, TypeError) as e:  # e.g. the config of a run written by another ddvlm version
        ap.error(f"{run_dir}: cannot rebuild its model ({e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
