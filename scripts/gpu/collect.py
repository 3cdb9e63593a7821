"""After the GPU training call: pack the best self-distilled run (by dev WA-F1) as default_checkpoint.tar
and every run's log into train_logs.txt under OUT (the device returns at most 8 files).

    python scripts/gpu/collect.py RUNS_DIR OUT
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path


MAX_CHECKPOINT_BYTES = 15 * 2**20  # what comes back from the device: files of at most 16 MiB


def main(runs: Path, out: Path) -> int:
    logs, best = [], None
    for result in sorted(runs.glob("ablation/*/seed*/results.json")):
        run_dir = result.parent
        info = json.loads(result.read_text())
        text = info["stages"]["text"]["best"]
        logs.append(f"{run_dir}: best epoch {text['epoch']} dev {text['dev_wa_f1']:.2f} test {text['test_wa_f1']:.2f}")
        if run_dir.parent.name == "text_sd" and (best is None or text["dev_wa_f1"] > best[1]):
            best = (run_dir, text["dev_wa_f1"])
    for log in sorted(runs.glob("ablation/*/seed*/train.log")):
        lines = [ln for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines()
                 if ln.strip() and "%|" not in ln]  # progress-bar redraws dropped, everything else kept
        logs += [f"==== {log}", *lines[-200:]]
    scratch = Path(os.environ.get("GPU_TMP", "/tmp"))  # train.sh's plan and ablate logs
    for name in ("plan.sh", "ablate_main.log", "ablate_extra.log"):
        if (scratch / name).is_file():
            logs += [f"==== {scratch / name}", *(scratch / name).read_text(errors="replace").splitlines()[-60:]]
    (out / "train_logs.txt").write_text("\n".join(logs) + "\n")
    size = sum(f.stat().st_size for f in (best[0] / "checkpoint").rglob("*") if f.is_file()) if best else 0
    if size > MAX_CHECKPOINT_BYTES:  # a full fine-tune stores the whole backbone: not a shippable default
        print(f"default candidate {best[0]} not packed: its checkpoint is {size / 2**20:.0f} MiB "
              f"(the device returns files of <= 16 MiB; the embedded default must stay <= 20 MB)")
        best = None
    if best:
        with tarfile.open(out / "default_checkpoint.tar", "w") as tar:
            for name in ("checkpoint", "results.json", "config.json", "confusion_text_test.png",
                         "confusion_text_dev.png"):
                if (best[0] / name).exists():
                    tar.add(best[0] / name, arcname=f"{best[0].parent.name}_{best[0].name}/{name}")
        print(f"default candidate: {best[0]} (dev WA-F1 {best[1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
