"""MODEL_CARD.md is generated from measured results only: the WOQ line comes from a real bench run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddvlm_core.quantization import cpu_has_fast_bf16
from training.loop import run
from training.model_card import MELD_TEST_SIZE, card

from test_training import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="the tiny model's shapes are for the decompress kernel (bf16 CPUs)")
def test_card_lists_woq_from_a_bench_run_of_the_same_checkpoint_on_the_whole_test_split(tmp_path, tiny_roberta_dir):
    run(tiny_cfg(tmp_path, tiny_roberta_dir, epochs=1), log=lambda *_: None)
    checkpoint = tmp_path / "run" / "checkpoint"
    subprocess.run([sys.executable, "bench/quantization.py", "--checkpoint", str(checkpoint), "--rows", "fp32,woq",
                    "--latency-rounds", "1", "--repeats", "2", "--report-dir", str(tmp_path / "reports")],
                   cwd=REPO, check=True, capture_output=True)
    report = json.loads((tmp_path / "reports" / "quantization.json").read_text())
    assert report["meta"]["n"] == MELD_TEST_SIZE and (tmp_path / "reports" / "quantization.md").is_file()
    rows = {r["row"]: r for r in report["rows"]}
    text = card(tmp_path / "run", checkpoint, "a test CPU", "pytest", quantization=report)
    line = next(line for line in text.splitlines() if "INT8 weight-only quantization" in line)
    assert f"test WA-F1 {rows['woq']['wa_f1']:.2f} vs {rows['fp32']['wa_f1']:.2f} FP32" in line
    assert f"{rows['woq']['bytes_ratio_vs_fp32']:.3f}x the weight bytes" in line
    partial = {**report, "meta": {**report["meta"], "n": 1000}}  # a --limit run: not the test split's result
    other = {**report, "meta": {**report["meta"], "checkpoint": "/elsewhere/checkpoints/another"}}
    for refused in (partial, other, None):
        assert "weight-only" not in card(tmp_path / "run", checkpoint, "a test CPU", "pytest", quantization=refused)
    # the same run read as a GPU report (a lent GPU session measures part of the split): listed with its size
    gpu = {**report, "meta": {**report["meta"], "device": "cuda", "gpu": "a test GPU", "n": 1000}}
    line = next(line for line in card(tmp_path / "run", checkpoint, "a test CPU", "pytest", gpu_quantization=gpu)
                .splitlines() if "On a GPU" in line)
    ratio = rows["woq"]["latency_ratio_vs_fp32"]
    assert f"{ratio['b1x128']:.2f}x / {ratio['b1x511']:.2f}x FP32" in line and "on 1000 MELD test utterances" in line
    assert ("slower than FP32" in line) == (max(ratio.values()) > 1)
    assert "On a GPU" not in card(tmp_path / "run", checkpoint, "a test CPU", "pytest", gpu_quantization=report)
    # a report with the torch.compile'd row (here the same run's woq row under that name): listed as such
    compiled = {**report, "rows": [{**r, "row": "woq_compiled"} if r["row"] == "woq" else r for r in report["rows"]]}
    line = next(line for line in card(tmp_path / "run", checkpoint, "a test CPU", "pytest",
                                      compiled_quantization=compiled).splitlines() if "The same, compiled" in line)
    assert f"test WA-F1 {rows['woq']['wa_f1']:.2f} vs {rows['fp32']['wa_f1']:.2f} FP32" in line
    assert f"latency {ratio['b1x128']:.2f}x / {ratio['b1x511']:.2f}x FP32" in line
    compiled_partial = {**compiled, "meta": {**compiled["meta"], "n": 1000}}
    refused = card(tmp_path / "run", checkpoint, "a test CPU", "pytest", compiled_quantization=compiled_partial)
    assert "The same, compiled" not in refused
