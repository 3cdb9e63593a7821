"""The lent-GPU tooling: backbone shards survive the trip bit-for-bit (after bf16 rounding) and damaged
or missing shards are refused; the planner picks what fits the budget; the training and quantization calls
(train.sh, quant.sh) run end to end here on a CPU with a tiny backbone, so a broken script is found before a
GPU session's one try."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

GPU = Path(__file__).resolve().parents[1] / "scripts" / "gpu"


def load(name):
    spec = importlib.util.spec_from_file_location(name, GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_shards_roundtrip_to_an_fp32_model_dir_and_refuse_damage(tmp_path, tiny_roberta_dir):
    shards = load("backbone_shards")
    dirs = shards.pack(Path(tiny_roberta_dir), tmp_path, max_mb=0.05)
    assert len(dirs) > 2 and all(sum(f.stat().st_size for f in d.iterdir()) < 0.05e6 + 2e5 for d in dirs[1:])
    out = shards.unpack(dirs, tmp_path / "model")
    original = load_file(Path(tiny_roberta_dir) / "model.safetensors")
    rebuilt = load_file(out / "model.safetensors")
    assert rebuilt.keys() == original.keys()
    for k, v in original.items():
        expected = v.to(torch.bfloat16).float() if v.is_floating_point() else v
        assert rebuilt[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype)
        assert torch.equal(rebuilt[k], expected), k
    assert (out / "config.json").is_file()
    with pytest.raises(FileNotFoundError, match="missing"):
        shards.unpack(dirs[:-1], tmp_path / "partial")
    part = dirs[1] / shards.SHARD
    from safetensors import safe_open

    with safe_open(str(part), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(part)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1  # a changed tensor with the old checksum
    save_file(tensors, part, metadata=meta)
    with pytest.raises(ValueError, match="sha256"):
        shards.unpack(dirs, tmp_path / "damaged")


def test_planner_prefers_three_seeds_and_falls_back_to_a_shorter_schedule_it_finishes():
    plan = load("plan")
    rich = plan.choose(t_epoch=20, startup=30, probed=6, budget=600)
    assert (rich["PARALLEL"], rich["SEEDS"], rich["EPOCHS"], rich["EXTRA"]) == (6, "0,1,2", 10, 1)
    assert rich["ESTIMATE_S"] <= 0.9 * 600
    # the third session's full fine-tuning: ~90 s per SD epoch, 6 runs at once; 10 epochs do not fit, 5 do
    short = plan.choose(t_epoch=90, startup=23, probed=6, budget=555)
    assert (short["PARALLEL"], short["SEEDS"], short["EPOCHS"]) == (6, "0,1,2", 5)
    tight = plan.choose(t_epoch=100, startup=30, probed=6, budget=555, min_epochs=6)  # 4 epochs fit: too short
    assert (tight["PARALLEL"], tight["SEEDS"]) == (2, "0") and tight["EPOCHS"] == int((0.9 * 555 - 30) / 100)
    # the loop's budget (from its start, after start-up) ends before train.sh kills the runs at budget - 30 s
    for chosen, budget in ((rich, 600), (short, 555), (tight, 555)):
        assert 30 + chosen["TIME_BUDGET_MIN"] * 60 <= budget - 30


def test_collect_packs_the_best_self_distilled_run_and_refuses_a_checkpoint_too_big_to_return(
        tmp_path, tiny_roberta_dir):
    import tarfile

    from test_training import tiny_cfg
    from training.loop import run

    collect = load("collect")
    runs = tmp_path / "runs"
    for row in ("text_sd", "text_no_sd"):
        run(tiny_cfg(tmp_path / row, tiny_roberta_dir, epochs=1, stages="text",
                     run_dir=str(runs / "ablation" / row / "seed0")), log=lambda *_: None)
    (runs / "ablation" / "text_sd" / "seed0" / "train.log").write_text("epoch 1\r 50%|##  |\rdone\n")
    out = tmp_path / "out"
    out.mkdir()
    assert collect.main(runs, out) == 0
    logs = (out / "train_logs.txt").read_text()
    assert logs.count("best epoch 1") == 2 and "done" in logs and "%|" not in logs  # progress redraws dropped
    with tarfile.open(out / "default_checkpoint.tar") as tar:
        names = tar.getnames()
    assert "text_sd_seed0/checkpoint/manifest.json" in names and not any("no_sd" in n for n in names)
    (out / "default_checkpoint.tar").unlink()
    collect.MAX_CHECKPOINT_BYTES = 1000  # a full fine-tune's checkpoint holds the whole backbone
    assert collect.main(runs, out) == 0 and not (out / "default_checkpoint.tar").exists()


def test_train_sh_assembles_the_shards_runs_the_plan_stops_on_its_budget_and_resumes(tmp_path, tiny_roberta_dir):
    """The one-shot GPU training call, run here on a CPU with a tiny backbone sent as shards: a first call
    stops every run after epoch 1 on its time budget (the resume state is written only then: --state_every=0),
    the same call again resumes them to the end, and collect.py packs the self-distilled run's checkpoint."""
    import json
    import os
    import subprocess
    import tarfile

    shards = load("backbone_shards").pack(Path(tiny_roberta_dir), tmp_path / "carried", max_mb=0.05)
    out = tmp_path / "out"
    env = {**os.environ, "GPU_TMP": str(tmp_path / "device"), "SHARDS": " ".join(map(str, shards)), "OUT": str(out),
           "DEVICE": "cpu", "BF16": "false", "LIMIT": "2", "CONFIG": "training/configs/lora.yaml",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    plan = "PARALLEL=2;ROWS=text_sd,text_no_sd;SEEDS=0;EPOCHS=2;EXTRA=0;TIME_BUDGET_MIN="
    for budget in ("1e-9", "0"):  # stop after epoch 1, then no budget
        out.mkdir(exist_ok=True)
        call = subprocess.run(["bash", "scripts/gpu/train.sh", "300"], cwd=GPU.parents[1], capture_output=True,
                              text=True, timeout=600, env={**env, "PLAN": plan + budget})
        assert call.returncode == 0, call.stdout[-2000:] + call.stderr[-2000:]
        report = json.loads((out / "ablation.json").read_text())
        assert [r["row"] for r in report["rows"]] == ["text_sd", "text_no_sd"]
        assert [r["runs"][0]["epochs_run"] for r in report["rows"]] == ([1, 1] if budget != "0" else [2, 2])
    logs = (out / "train_logs.txt").read_text()
    assert logs.count("[text] resumed after epoch 1") == 2 and "TIME_BUDGET_MIN=0" in logs
    assert [r["runs"][0]["resumed_after"] for r in report["rows"]] == [1, 1]  # its seconds count epoch 1 too
    with tarfile.open(out / "default_checkpoint.tar") as tar:
        assert "text_sd_seed0/checkpoint/manifest.json" in tar.getnames()


def test_quant_sh_assembles_the_backbone_when_missing_and_writes_the_report(tmp_path, tiny_roberta_dir,
                                                                            tiny_text_checkpoint):
    """The GPU quantization call, run here on a CPU (DEVICE=cpu) on a tiny checkpoint: it assembles the carried
    shards when no backbone is there yet, and passes rows, their time limit, latency rounds and the utterance
    limit on."""
    import json
    import os
    import subprocess

    shards = load("backbone_shards").pack(Path(tiny_roberta_dir), tmp_path / "carried", max_mb=0.05)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "GPU_TMP": str(tmp_path / "device"), "SHARDS": " ".join(map(str, shards)), "OUT": str(out),
           "DEVICE": "cpu", "CHECKPOINT": tiny_text_checkpoint, "ROWS": "woq_dequant", "ROW_TIMEOUT": "300",
           "REPEATS": "2", "ROUNDS": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    call = subprocess.run(["bash", "scripts/gpu/quant.sh", "40"], cwd=GPU.parents[1], capture_output=True, text=True,
                          timeout=600, env=env)
    assert call.returncode == 0, call.stdout[-2000:] + call.stderr[-2000:]
    assert (tmp_path / "device" / "ddvlm" / "models" / "all-mpnet-base-v2" / "model.safetensors").is_file()
    report = json.loads((out / "quantization.json").read_text())
    assert [r["row"] for r in report["rows"]] == ["woq_dequant"] and report["meta"]["n"] == 40  # ROWS: that one
    assert all("error" not in r for r in report["rows"]) and report["meta"]["pending_rows"] == []
    assert [len(r["latency_rounds"]) for r in report["rows"]] == [2]  # ROUNDS: the row timed in 2 processes


def test_a_shard_upload_call_still_fits_the_device_carry_limit_beside_the_tracked_tree():
    """Each upload call carries the whole tracked tree and one shard (<= 64 MiB in all): tracked files that
    grow past the margin would make the next GPU session's uploads fail, so CI says so first."""
    import subprocess

    shards = load("backbone_shards")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=GPU.parents[1], capture_output=True, check=True).stdout
    tracked = sum((GPU.parents[1] / name).stat().st_size for name in listed.decode().split("\0") if name
                  and (GPU.parents[1] / name).is_file())
    assert tracked > 5e6  # the checkpoint and MELD's CSVs are in it: the listing worked
    needed = tracked + shards.MAX_SHARD_MB * 1e6 + 1e6
    assert needed <= shards.CARRY_LIMIT, (
        f"tracked tree {tracked / 1e6:.1f} MB + a shard of {shards.MAX_SHARD_MB} MB exceed one device call's "
        f"{shards.CARRY_LIMIT / 2**20:.0f} MiB: pack smaller shards (more upload calls) or track fewer bytes")
