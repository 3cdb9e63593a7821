"""Export a checkpoint from a run directory's best-on-dev text weights, e.g. after an interrupted run.

    python -m training.export RUN_DIR [OUT_DIR]      (default OUT_DIR: RUN_DIR/checkpoint)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from ddvlm_core.model import DDVLM
from training.config import TrainConfig
from training.state import load_trainable_state


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    model, _ = DDVLM.from_backbone(cfg.model_config())
    best = load_file(run_dir / "text" / "best.safetensors")
    modules = ["text_head"]
    if cfg.text_mode == "lora":
        from ddvlm_core.lora import apply_lora

        model.config.lora = cfg.lora_settings()
        model.text.backbone = apply_lora(model.text.backbone, model.config.lora)
        load_trainable_state(model.text, best)
        modules.append("backbone_lora")
    elif cfg.text_mode == "frozen":
        load_trainable_state(model.text.head, {k.split(".", 1)[1]: v for k, v in best.items()})
    else:
        load_trainable_state(model.text, best)
        modules.append("backbone")
    result = json.loads((run_dir / "text" / "last" / "state.json").read_text())["info"]
    return model.save(out or run_dir / "checkpoint", tuple(modules),
                      extra={"trained_by": "training.export", "run": cfg.to_dict(), "text_best": result["best"]})


if __name__ == "__main__":
    if not 1 <= len(sys.argv) - 1 <= 2 or not (Path(sys.argv[1]) / "text" / "best.safetensors").is_file():
        sys.exit("usage: python -m training.export RUN_DIR [OUT_DIR]; RUN_DIR must hold a run's "
                 "text/best.safetensors" + (f" ({sys.argv[1]} does not)" if len(sys.argv) > 1 else ""))
    print(export(*sys.argv[1:3]))
