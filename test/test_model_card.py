"""MODEL_CARD.md is generated from measured results only: the WOQ line comes from a real bench run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.loop import run
from training.model_card import MELD_TEST_SIZE, card, gpu_quantization_lines

from bench_modules import load_bench
from test_training import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


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
    gpu_card = card(tmp_path / "run", checkpoint, "a test CPU", "pytest",
                    gpu_quantization=[("reports/quantization_gpu.md", gpu)])
    line = next(line for line in gpu_card.splitlines() if "On a GPU" in line)
    ratio = rows["woq"]["latency_ratio_vs_fp32"]
    assert f"{ratio['b1x128']:.2f}x / {ratio['b1x511']:.2f}x FP32" in line
    assert "on 1000 MELD test utterances (reports/quantization_gpu.md)" in line
    verdict = "slower" if max(ratio.values()) > 1 else "not slower"  # "not slower" holds "slower" too: whole phrase
    assert f"prompts, {verdict} than FP32 there" in line
    cpu_report = [("r.md", report)]  # a CPU run is no GPU line
    assert "On a GPU" not in card(tmp_path / "run", checkpoint, "a test CPU", "pytest", gpu_quantization=cpu_report)
    # a report with the torch.compile'd row (here the same run's woq row under that name): listed as such
    compiled = {**report, "rows": [{**r, "row": "woq_compiled"} if r["row"] == "woq" else r for r in report["rows"]]}
    line = next(line for line in card(tmp_path / "run", checkpoint, "a test CPU", "pytest",
                                      compiled_quantization=compiled).splitlines() if "The same, compiled" in line)
    assert f"test WA-F1 {rows['woq']['wa_f1']:.2f} vs {rows['fp32']['wa_f1']:.2f} FP32" in line
    assert f"latency {ratio['b1x128']:.2f}x / {ratio['b1x511']:.2f}x FP32" in line
    compiled_partial = {**compiled, "meta": {**compiled["meta"], "n": 1000}}
    refused = card(tmp_path / "run", checkpoint, "a test CPU", "pytest", compiled_quantization=compiled_partial)
    assert "The same, compiled" not in refused


SOURCE = "reports/quantization_gpu.md"


def test_cuda_graph_rows_are_compared_with_fp32_in_the_same_mode_in_the_bench_and_the_card(tmp_path):
    """bench/quantization.py's same-mode ratio and the card's CUDA-graph line, on a GPU report of known latencies
    (the rows only run on a GPU: here they are refused)."""
    bench = load_bench("quantization")
    with pytest.raises(ValueError, match="needs a GPU"):
        bench.build("woq_cudagraphs", str(tmp_path), [], 1, device="cpu")
    with pytest.raises(ValueError, match="needs a GPU"):
        bench.build("woq_graphed", str(tmp_path), [], 1, device="cpu")

    def row(name, ms128, ms511, wa_f1=60.0):
        return {"row": name, "title": bench.ROWS[name], "wa_f1": wa_f1,
                "latency": {"b1x128": {"p50_ms": ms128}, "b1x511": {"p50_ms": ms511}},
                "latency_ratio_vs_fp32": {"b1x128": ms128 / 5.0, "b1x511": ms511 / 8.0}}

    recorded = {"cuda_graphs": "recorded", "cuda_graph_skips": []}  # what compile_row stores on a GPU
    rows = [row("fp32", 5.0, 8.0), row("woq", 8.0, 12.0), {**row("fp32_cudagraphs", 2.0, 4.0), **recorded},
            {**row("woq_cudagraphs", 1.0, 5.0, 59.5), **recorded}, row("woq_compiled", 3.0, 6.0)]
    lines = bench.same_mode_ratios({r["row"]: r for r in rows})
    assert lines == [f"- {bench.ROWS['woq_cudagraphs']}: 0.50 / 1.25 x {bench.ROWS['fp32_cudagraphs']} "
                     "(128 / 511 tokens, same execution mode)"]  # woq_compiled: no fp32_compiled to compare with
    assert rows[3]["latency_ratio_vs_fp32_same_mode"] == {"b1x128": 0.5, "b1x511": 1.25}
    checkpoint = tmp_path / "checkpoints" / "default"
    report = {"meta": {"checkpoint": str(checkpoint), "device": "cuda", "gpu": "a test GPU", "torch": "2.x",
                       "split": "test", "n": 1000}, "rows": rows}
    text = "\n".join(gpu_quantization_lines([(SOURCE, report)], checkpoint))
    assert ("On a GPU with CUDA graphs** (node parameters `compile: true`, `compile_mode: reduce-overhead`): "
            "WOQ latency 0.20x / 0.62x eager FP32 and 0.50x / 1.25x FP32 in the same mode; WA-F1 59.50") in text
    assert "without inductor" not in text  # no woq_graphed / fp32_graphed rows in this report
    graphed = [row("fp32", 5.0, 8.0), row("woq", 8.0, 12.0), {**row("fp32_graphed", 4.0, 6.0), **recorded},
               {**row("woq_graphed", 3.0, 6.0, 59.0), **recorded}]
    assert bench.same_mode_ratios({r["row"]: r for r in graphed}) == [
        f"- {bench.ROWS['woq_graphed']}: 0.75 / 1.00 x {bench.ROWS['fp32_graphed']} "
        "(128 / 511 tokens, same execution mode)"]
    text = "\n".join(gpu_quantization_lines([(SOURCE, {**report, "rows": graphed})], checkpoint))
    assert ("On a GPU with CUDA graphs without inductor, no Triton** (node parameters `compile: true`, "
            "`compile_mode: cudagraphs`): WOQ latency 0.60x / 0.75x eager FP32 and 0.75x / 1.00x FP32 in the same "
            "mode; WA-F1 59.00") in text
    # the H100 run of stop 15, written before the bench stored the fields: --render reads them from its note
    note = ("torch.compile (dynamo cudagraphs backend ...): compiled in 37 s, CUDA graphs skipped: cpu device "
            "(arange_4). Found from :")
    assert bench.graph_fields_from_note(note) == {"cuda_graphs": "skipped",
                                                  "cuda_graph_skips": ["cpu device (arange_4)"]}
    assert bench.graph_fields_from_note("...: compiled in 53 s, CUDA graphs recorded") == recorded
    assert bench.graph_fields_from_note("...: CUDA graphs skipped: a (+2 more); int8") == {
        "cuda_graphs": "skipped", "cuda_graph_skips": ["a"]}
    assert bench.graph_fields_from_note("kernel decompress ...") == {}
    graphed[3] |= bench.graph_fields_from_note(note)
    text = "\n".join(gpu_quantization_lines([(SOURCE, {**report, "rows": graphed})], checkpoint))
    assert ("On a GPU, `compile_mode: cudagraphs`**: torch skipped the CUDA graphs in that run (cpu device "
            "(arange_4)), so its latencies are not those of CUDA graphs without inductor, no Triton "
            f"({SOURCE}).") in text
    assert "0.75x / 1.00x" not in text
    for key in ("cuda_graphs", "cuda_graph_skips"):  # a row that does not say: no CUDA-graph latency claimed
        del graphed[3][key]
    text = "\n".join(gpu_quantization_lines([(SOURCE, {**report, "rows": graphed})], checkpoint))
    assert "the report does not say whether torch recorded CUDA graphs" in text and "0.75x / 1.00x" not in text
    fresh = [row("fp32", 5.0, 8.0), row("woq", 8.0, 12.0), row("woq_cudagraphs", 1.0, 5.0)]
    assert bench.same_mode_ratios({r["row"]: r for r in fresh}) == []  # no fp32_cudagraphs: nothing to compare
    no_graphs = {**report, "rows": fresh}
    assert "CUDA graphs" not in "\n".join(gpu_quantization_lines([(SOURCE, no_graphs)], checkpoint))


def test_each_gpu_line_comes_from_the_newest_report_that_measured_its_rows(tmp_path):
    """GPU sessions measure some rows each: a newer report's rows win, a mode it did not run comes from an
    older one, and each line names the report it came from."""
    checkpoint = tmp_path / "checkpoints" / "default"

    def row(name, ms128, wa_f1, same_mode=None):
        made = {"row": name, "wa_f1": wa_f1, "latency_ratio_vs_fp32": {"b1x128": ms128 / 10.0, "b1x511": 1.0}}
        if same_mode is not None:
            made |= {"cuda_graphs": "recorded", "latency_ratio_vs_fp32_same_mode": {"b1x128": same_mode, "b1x511": 1.0}}
        return made

    def report(n, rows, device="cuda"):
        return {"meta": {"checkpoint": str(checkpoint), "device": device, "gpu": "G", "torch": "2.x", "split": "test",
                         "n": n}, "rows": rows}

    newer = report(300, [row("fp32", 10.0, 64.0), row("woq", 11.0, 64.5), row("woq_graphed", 4.0, 64.5, 0.8),
                         {**row("woq_awq", 9.0, 64.9), "error": "a failed row"}])
    older = report(325, [row("fp32", 7.0, 63.1), row("woq", 8.0, 63.6), row("woq_cudagraphs", 1.5, 63.6, 0.5),
                         row("woq_graphed", 5.0, 63.6, 0.9)])
    lines = gpu_quantization_lines([("new.md", newer), ("old.md", older)], checkpoint)
    assert len(lines) == 3
    assert "WOQ latency 1.10x / 1.00x FP32" in lines[0] and "on 300 MELD test utterances (new.md)" in lines[0]
    assert "`compile_mode: cudagraphs`): WOQ latency 0.40x / 1.00x eager FP32 and 0.80x" in lines[2]
    assert lines[2].endswith("on 300 MELD test utterances (new.md).")
    assert "`compile_mode: reduce-overhead`): WOQ latency 0.15x / 1.00x eager FP32 and 0.50x" in lines[1]
    assert lines[1].endswith("WA-F1 63.60 on 325 MELD test utterances (old.md).")
    # the newer report without its eager WOQ row: the eager line is the older one's; a CPU report is skipped
    no_eager = {**newer, "rows": [r for r in newer["rows"] if r["row"] != "woq"]}
    cpu = report(2610, [row("fp32", 1.0, 1.0), row("woq", 1.0, 1.0)], device="cpu")
    lines = gpu_quantization_lines([("cpu.md", cpu), ("new.md", no_eager), ("old.md", older)], checkpoint)
    assert [line[line.rindex("("):] for line in lines] == ["(old.md).", "(old.md).", "(new.md)."]
    assert lines[0].startswith("- **On a GPU** (") and "on 325 MELD test utterances" in lines[0]
    assert not any("cpu.md" in line for line in lines)
    other = report(300, newer["rows"]) | {"meta": {**newer["meta"], "checkpoint": "/x/checkpoints/other"}}
    assert gpu_quantization_lines([("other.md", other)], checkpoint) == []


def test_the_card_command_refuses_what_is_not_a_run_or_a_checkpoint_with_one_line(tmp_path, capsys):
    from training.model_card import main

    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "no_run")])
    assert stop.value.code == 2 and "not a training run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--checkpoint", str(tmp_path / "no_checkpoint"),
              "--out", str(tmp_path / "card.md")])
    assert f"no such file: {tmp_path / 'no_checkpoint'}/manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "card.md").exists()


@pytest.mark.ros  # the bench replays a bag through rclpy's deserializer
def test_the_card_says_what_transcripts_without_punctuation_cost_from_a_bench_run_of_the_checkpoint(
        tmp_path, tiny_text_checkpoint):
    """bench/asr_noise.py with its rows without punctuation, on a tiny checkpoint: its JSON gives the card's line."""
    from training.model_card import asr_lines

    out = tmp_path / "reports" / "punctuation"  # a folder that does not exist yet, nor its parent
    proc = subprocess.run([sys.executable, "bench/asr_noise.py", "--model-dir", str(tiny_text_checkpoint),
                           "--wers", "0", "--unpunctuated-wers", "0", "--report-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "replay_asr_noise.json").read_text())
    assert [(r["target_wer"], r["punctuation"], r["n"]) for r in report["rows"]] == [(0, True, 2610), (0, False, 2610)]
    assert all(r["measured_wer"] == 0 for r in report["rows"])  # case and punctuation are not word errors
    # the published confidence is scored too: ECE is at least the gap between mean confidence and accuracy
    assert all(abs(r["mean_confidence"] - r["accuracy"]) - 1e-9 <= r["ece"] <= 100 for r in report["rows"])
    clean, plain = report["rows"]
    assert "| 0% | no | 0.0% |" in (out / "replay_asr_noise.md").read_text()
    assert "| mean confidence | ECE | misheard | accuracy, misheard | accuracy, the others | utterances |" in (
        out / "replay_asr_noise.md").read_text()
    # without word errors no utterance is misheard: the others are all of them
    assert all((r["misheard_share"], r["accuracy_misheard"]) == (0, None) for r in report["rows"])
    assert all(r["accuracy_heard"] == pytest.approx(r["accuracy"]) for r in report["rows"])
    [line] = asr_lines(report, Path(tiny_text_checkpoint))
    assert line.startswith(f"- **Transcripts without punctuation** (ASRs that do not punctuate): test WA-F1 "
                           f"{plain['wa_f1']:.2f}, against {clean['wa_f1']:.2f} on MELD's punctuated text. ")
    assert asr_lines(report, tmp_path / "checkpoints" / "another") == []  # another checkpoint's measurement
    assert asr_lines({**report, "rows": report["rows"][:1]}, Path(tiny_text_checkpoint)) == []
