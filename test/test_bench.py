"""bench/quantization.py as a one-shot run on a lent GPU uses it: a row that runs too long is stopped and
reported, and the report on disk is rewritten after every row (a run stopped from outside keeps its rows)."""
import argparse
import json
import re
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench_modules import load_bench

REPO = Path(__file__).resolve().parents[1]


def test_a_row_past_its_timeout_is_stopped_and_reported_failed(tmp_path, tiny_text_checkpoint):
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "bench/quantization.py", "--checkpoint", str(tiny_text_checkpoint),
                           "--rows", "fp32,woq", "--latency-rounds", "2", "--row-timeout", "0.3",
                           "--report-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "quantization.json").read_text())
    assert [(r["row"], r["error"]) for r in report["rows"]] == [
        ("fp32", "timed out after 0.3 s (--row-timeout)"), ("woq", "timed out after 0.3 s (--row-timeout)")]
    assert report["meta"]["pending_rows"] == []
    assert "| FP32 (PyTorch) | failed: timed out after 0.3 s" in (out / "quantization.md").read_text()


def test_a_failed_row_reports_its_error_with_where_it_was_raised(tiny_text_checkpoint):
    """The lent GPU returns only the report: a failed row's error names the exception and the place."""
    bench = load_bench("quantization")
    args = argparse.Namespace(checkpoint=str(tiny_text_checkpoint), split="test", limit=4, repeats=1, device="cpu",
                              row_timeout=0)
    result, error = bench.child("fp32_graphed", args)  # a GPU row on a CPU: refused inside build()
    assert result is None
    assert re.fullmatch(r"ValueError: row 'fp32_graphed' needs a GPU \(at bench/quantization\.py:\d+ build\)", error)
    try:
        torch.zeros(2, 3) @ torch.zeros(2, 3)  # raised inside torch: the repo's innermost frame is named too
    except RuntimeError:
        text = bench.failure_text(traceback.format_exc(), 1)
    assert re.fullmatch(r"RuntimeError: mat1 and mat2 shapes cannot be multiplied.* \(at test/test_bench\.py:\d+ "
                        r"test_a_failed_row_reports_its_error_with_where_it_was_raised\)", text), text
    ours, theirs = REPO / "ddvlm_core" / "model.py", "/v/lib/python3.11/site-packages/torch/x.py"
    library = (f'Traceback (most recent call last):\n  File "{ours}", line 7, in run\n    x()\n'
               f'  File "{theirs}", line 9, in f\n    y()\nRuntimeError: boom')
    assert bench.failure_text(library, 1) == "RuntimeError: boom (at torch/x.py:9 f; from ddvlm_core/model.py:7 run)"
    assert bench.failure_text("", 9) == "exit 9" and bench.failure_text("killed\n", 9) == "killed"
    said = f"warning: slow\n{bench.PROGRESS}building the woq model\n{bench.PROGRESS}compiling (cudagraphs)\nnoise\n"
    assert bench.timeout_text(80, said.encode()) == "timed out after 80 s (--row-timeout) while compiling (cudagraphs)"
    assert bench.timeout_text(0.3, None) == "timed out after 0.3 s (--row-timeout)"


@pytest.mark.parametrize("bench, option", [("quantization.py", "--checkpoint"), ("asr_noise.py", "--model-dir"),
                                           ("ros_latency.py", "--model-dir"), ("asr_loops.py", "--model-dir"),
                                           ("asr_partials.py", "--model-dir"), ("late_transcripts.py", "--model-dir"),
                                           ("camera_cost.py", "--model-dir"), ("turn_ends.py", "--model-dir"),
                                           ("context_turns.py", "--model-dir"),
                                           ("executor_transitions.py", "--model-dir")])
def test_a_path_that_is_not_a_checkpoint_is_refused_before_any_report_is_written(tmp_path, bench, option):
    out = tmp_path / "reports"
    extra = ["--report-dir", str(out)] if bench == "quantization.py" else []
    proc = subprocess.run([sys.executable, f"bench/{bench}", option, str(tmp_path), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and option in proc.stderr and "not a ddvlm checkpoint" in proc.stderr
    if extra:  # the others write their reports only after all rows
        assert not out.exists()  # the committed report is not replaced by a table of failures


@pytest.mark.parametrize("wers, message", [("0,0.1,a", "comma-separated numbers"), ("0,2", "each in [0, 1]"),
                                           ("nan", "each in [0, 1]")])
def test_the_asr_noise_bench_refuses_word_error_rates_outside_0_to_1_before_any_bag_is_written(wers, message, capsys):
    bench = load_bench("asr_noise")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--wers", wers])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_asr_noise_bench_splits_the_answers_by_how_much_of_each_utterance_the_asr_misheard():
    """Utterances with half their words wrong or more are the misheard ones; the accuracy of the answers to them and
    to the others."""
    split = load_bench("asr_noise").misheard_split({"a": True, "b": False, "c": True, "d": True},
                                                   {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.49})
    assert split == {"misheard_share": 50.0, "accuracy_misheard": 50.0, "accuracy_heard": 100.0}
    assert load_bench("asr_noise").misheard_split({"a": True}, {"a": 0.0})["accuracy_misheard"] is None


def test_the_ros_latency_bench_refuses_a_count_below_one_before_any_row_runs():
    proc = subprocess.run([sys.executable, "bench/ros_latency.py", "--n", "0"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--n must be >= 1, got 0" in proc.stderr and "Traceback" not in proc.stderr


def test_a_ros_latency_row_whose_node_does_not_configure_stops_the_bench_with_the_reason(tmp_path,
                                                                                         tiny_text_checkpoint):
    """A checkpoint whose backbone is not on this machine: the first row fails, the bench says why in one line and
    stops (it used to end in the parent's CalledProcessError traceback), leaving the reports as they were."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(tiny_text_checkpoint, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["config"]["text_backbone"] = str(tmp_path / "elsewhere")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    before = (REPO / "reports" / "ros_latency.json").read_bytes()
    proc = subprocess.run([sys.executable, "bench/ros_latency.py", "--model-dir", str(moved), "--n", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "row bare_predict failed: " in proc.stderr and "cannot be loaded here" in proc.stderr
    assert (REPO / "reports" / "ros_latency.json").read_bytes() == before


def test_bad_options_and_reports_of_another_kind_are_refused_before_anything_is_written(tmp_path, capsys):
    bench = load_bench("quantization")
    other = tmp_path / "ablation.json"  # another bench's report, passed by mistake: refused, left as it was
    other.write_text((REPO / "reports" / "ablation.json").read_text())
    cases = [(["--render", str(other)], "ablation.json: not a quantization report"),
             (["--render", str(REPO / "README.md")], "README.md: not JSON"),
             (["--render", str(tmp_path / "gone.json")], "no such report"),
             (["--rows", "fp32,fp33"], "--rows: unknown fp33 (rows: fp32, fp16"),
             (["--limit", "-3"], "--limit must be >= 0"), (["--repeats", "0"], "--repeats must be >= 1"),
             (["--latency-rounds", "0"], "--latency-rounds must be >= 1"),
             (["--row-timeout", "-1"], "--row-timeout must be >= 0")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            bench.main([*argv, "--report-dir", str(tmp_path / "reports")])
        assert stop.value.code == 2 and message in capsys.readouterr().err, argv
    assert other.read_text() == (REPO / "reports" / "ablation.json").read_text()
    assert not (tmp_path / "ablation.md").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("config, message", [("training/configs/cpu.yaml", "lora_layers above layer 0"),
                                             ("missing.yaml", "No such file")])
def test_the_layer_cache_bench_refuses_a_config_without_frozen_layers_to_cache(tmp_path, config, message):
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "bench/layer_cache.py", "--config", config, "--report-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--config" in proc.stderr and message in proc.stderr and not out.exists()


def test_the_layer_cache_bench_times_both_ways_on_the_same_batches(tmp_path, tiny_roberta_dir):
    import json

    config = tmp_path / "tiny.yaml"
    config.write_text(f"text_mode: lora\nlora_layers: [1]\ntext_backbone: {tiny_roberta_dir}\nbatch_size: 4\n"
                      "eval_batch_size: 8\nlr: 1.0e-3\n")
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "bench/layer_cache.py", "--config", str(config), "--steps", "2",
                           "--dialogues", "3", "--report-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "layer_cache.json").read_text())
    whole, cached = report["rows"]["whole backbone"], report["rows"]["cached frozen layers"]
    assert whole["steps"] == cached["steps"] == 2 and whole["tokens_per_step"] == cached["tokens_per_step"] > 0
    assert report["step_ratio"] == pytest.approx(cached["step_s"] / whole["step_s"]) and cached["setup_s"] > 0
    assert f"| ratio | {report['step_ratio']:.2f}x |" in (out / "layer_cache.md").read_text()


def test_the_report_written_while_running_names_the_rows_still_to_run(tmp_path):
    bench = load_bench("quantization")
    done = {"row": "fp32", "title": bench.ROWS["fp32"], "wa_f1": 60.0, "accuracy": 61.0, "n": 10,
            "weight_bytes": 4 * 2**20, "note": "", "peak_rss_mb": 100.0, "predictions": [0] * 10,
            "latency": {"b1x128": {"p50_ms": 5.0, "p90_ms": 6.0}, "b1x511": {"p50_ms": 8.0, "p90_ms": 9.0}},
            "latency_rounds": [{}]}
    args = SimpleNamespace(checkpoint="ckpt", split="test", latency_rounds=1, device="cpu", report_dir=str(tmp_path))
    bench.write_report([done], args, pending=["woq", "woq_compiled"])
    text = (tmp_path / "quantization.md").read_text()
    assert "rows not run yet: woq, woq_compiled" in text and "| FP32 (PyTorch) | 60.00 |" in text
    assert json.loads((tmp_path / "quantization.json").read_text())["meta"]["pending_rows"] == ["woq", "woq_compiled"]
    bench.write_report([done], args)  # the final report: nothing pending, no partial note
    assert "Partial report" not in (tmp_path / "quantization.md").read_text()


def test_a_compiled_row_is_compiled_now_and_its_note_says_how(tiny_text_checkpoint):
    """The bench's compile step for the rows *_compiled / *_cudagraphs / *_graphed, here in the mode that needs
    neither a C++ compiler nor Triton (on a CPU: traced, no CUDA graphs recorded)."""
    from ddvlm_core.model import DDVLM
    from ddvlm_core.quantization import WOQConfig

    bench = load_bench("quantization")
    model, tok, _ = DDVLM.load(tiny_text_checkpoint)
    model.quantize(WOQConfig(kernel="dequant"))
    note, graphs = bench.compile_row(model, tok, "cpu", "cudagraphs", woq=True)
    assert graphs == {}  # CUDA graphs are recorded on a GPU only: nothing to store for the row
    assert note.startswith("kernel decompress traced by torch.compile and replayed as CUDA graphs")
    assert "torch.compile (dynamo cudagraphs backend, no inductor, dynamic shapes, CUDA graphs per 64-token" in note
    assert model.text.backbone._compiled_call_impl is not None and " s" in note.rsplit("compiled in", 1)[1]


def test_render_rebuilds_the_markdown_from_the_json_and_marks_ratios_a_run_did_not_measure(tmp_path):
    """A GPU run has no dynamic INT8 row: its 'x dynamic' cells read '—', not 'nan'. --render rewrites the
    Markdown from the JSON alone (a report brought back from the GPU machine), the same as the run wrote."""
    bench = load_bench("quantization")

    def row(name, ms128, ms511):
        return {"row": name, "title": bench.ROWS[name], "wa_f1": 60.0, "accuracy": 61.0, "n": 10,
                "weight_bytes": 4 * 2**20, "note": "", "peak_rss_mb": 100.0, "predictions": [0] * 10,
                "latency": {"b1x128": {"p50_ms": ms128, "p90_ms": ms128}, "b1x511": {"p50_ms": ms511, "p90_ms": ms511}},
                "latency_rounds": [{}]}

    args = SimpleNamespace(checkpoint="ckpt", split="test", latency_rounds=1, device="cuda", report_dir=str(tmp_path))
    bench.write_report([row("fp32", 5.0, 8.0), row("woq", 4.0, 6.0)], args)
    written = (tmp_path / "quantization_gpu.md").read_text()
    assert "| 0.80 / 0.75 | — | 100 |" in written and "nan" not in written
    (tmp_path / "quantization_gpu.md").unlink()
    render = [sys.executable, "bench/quantization.py", "--render", str(tmp_path / "quantization_gpu.json")]
    assert subprocess.run(render, cwd=REPO, timeout=120).returncode == 0
    assert (tmp_path / "quantization_gpu.md").read_text() == written
    # a report written before the bench stored CUDA-graph fields gets them from its rows' notes
    report = json.loads((tmp_path / "quantization_gpu.json").read_text())
    report["rows"][1]["note"] = "torch.compile (...): compiled in 37 s, CUDA graphs skipped: cpu device (arange_4)"
    (tmp_path / "quantization_gpu.json").write_text(json.dumps(report))
    assert subprocess.run(render, cwd=REPO, timeout=120).returncode == 0
    rows = json.loads((tmp_path / "quantization_gpu.json").read_text())["rows"]
    assert "cuda_graphs" not in rows[0]
    assert rows[1]["cuda_graphs"] == "skipped" and rows[1]["cuda_graph_skips"] == ["cpu device (arange_4)"]


def test_the_speaker_tokens_bench_scores_both_ways_on_the_same_utterances(tmp_path, tiny_text_checkpoint):
    from ddvlm_core.meld import dialogues

    bench = load_bench("speaker_tokens")
    out = tmp_path / "speaker_tokens.md"
    assert bench.main(["--model-dir", tiny_text_checkpoint, "--dialogues", "2", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    n = sum(len(d) for d in list(dialogues("test").values())[:2])
    assert {k: v["n"] for k, v in result["scores"].items()} == {"real speakers": n, "every turn one speaker": n}
    cos = result["speaker_token_cosine_s1_s9"]
    assert -1 <= cos["min"] <= cos["max"] <= 1
    assert "| real speakers |" in out.read_text() and result["dialogues"] == 2


def test_the_turn_ends_bench_scores_each_writing_of_the_same_utterances(tmp_path, tiny_text_checkpoint):
    """bench/turn_ends.py on a tiny checkpoint and the first 12 utterances of MELD dev: a row per writing, each
    scored on the same 12 (the last two unpunctuated), the Markdown from the JSON."""
    from ddvlm_core.asr_noise import unpunctuate
    from ddvlm_core.context import end_sentence
    from ddvlm_core.labels import LABELS
    from ddvlm_core.metrics import metrics

    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "bench/turn_ends.py", "--splits", "dev", "--limit", "12", "--model-dir",
                           tiny_text_checkpoint, "--report-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "turn_ends.json").read_text())
    assert [(r["unpunctuated"], r["turns_ended"], r["n"]) for r in report["rows"]] == [
        (False, False, 12), (True, False, 12), (True, True, 12)]
    bench = load_bench("turn_ends")
    contexts, gold, dialogues = bench.contexts_of("dev", unpunctuated=True, limit=12)
    assert contexts[1] == [(s, unpunctuate(t)) for s, t in bench.contexts_of("dev", False, 12)[0][1]]
    assert dialogues == [0] * 2 + [1] * 10  # dev's dialogue 0 has 2 utterances, 1 has 16
    paired = report["rows"][2]["against_read_as_it_is"]
    assert paired["difference"] == pytest.approx(report["rows"][2]["wa_f1"] - report["rows"][1]["wa_f1"])
    assert paired["unit"] == "utterance"  # 2 dialogues are too few to resample
    from ddvlm_core.inference import EmotionRecognizer

    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    ended = [[(s, end_sentence(t)) for s, t in c] for c in contexts]  # written so, read by a recognizer as it is
    wa_f1 = metrics(gold, [LABELS.index(p.top_label) for p in rec.predict_many(ended)])["wa_f1"]
    assert report["rows"][2]["wa_f1"] == pytest.approx(wa_f1)
    markdown = bench.markdown(report["rows"], report["command"], report["model_dir"])
    assert (out / "turn_ends.md").read_text() == markdown


def test_the_context_turns_bench_scores_each_window_and_times_each_in_one_long_conversation(
        tmp_path, tiny_text_checkpoint):
    """bench/context_turns.py on a tiny checkpoint and the first 12 utterances of MELD dev: a row per number of
    turns (the node's default, 32, always one), each scored on the same 12 as a recognizer scores the contexts the
    node keeps, the default against the others paired, the answers timed in one conversation made of the split's
    dialogues, in which each row's prompts hold its number of turns; the Markdown from the JSON."""
    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.labels import LABELS
    from ddvlm_core.metrics import metrics

    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "bench/context_turns.py", "--turns", "2,1", "--splits", "dev", "--limit",
                           "12", "--latency-utterances", "3", "--model-dir", tiny_text_checkpoint, "--report-dir",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "context_turns.json").read_text())
    assert [(r["max_context_turns"], r["n"]) for r in report["rows"]] == [(1, 12), (2, 12), (32, 12)]
    bench = load_bench("context_turns")
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    for row in report["rows"]:
        contexts, gold, _ = bench.contexts_of("dev", row["max_context_turns"], limit=12)
        predicted = [LABELS.index(p.top_label) for p in rec.predict_many(contexts)]
        assert row["wa_f1"] == pytest.approx(metrics(gold, predicted)["wa_f1"])
        lengths = [len(rec.prompts.build(list(c)).input_ids) for c in contexts]
        assert row["mean_tokens"] == pytest.approx(sum(lengths) / 12) and row["cut_by_token_cap"] == 0
    one, two, default = report["rows"]
    assert one["mean_tokens"] < two["mean_tokens"] < default["mean_tokens"]
    assert two["against_default"]["difference"] == pytest.approx(two["wa_f1"] - default["wa_f1"])
    assert "against_default" not in default
    latency = report["latency"]
    assert latency["utterances"] == 3 and set(latency["rows"]) == {"1", "2", "32"}
    assert latency["rows"]["32"]["ratio_to_default"] == 1.0 and all(r["ms"] > 0 for r in latency["rows"].values())
    timed = {k: bench.long_conversation("dev", k, 3) for k in (1, 2, 32)}
    assert [len(c) for c in timed[2]] == [2, 2, 2] and [len(c) for c in timed[32]] == [32, 32, 32]
    assert [c[-1] for c in timed[1]] == [c[-1] for c in timed[32]]  # the same answers: turns 33 to 35
    markdown = bench.markdown(report["rows"], latency, report["command"], report["model_dir"])
    assert (out / "context_turns.md").read_text() == markdown
    assert report["command"] == ("python bench/context_turns.py --turns 2,1 --splits dev --limit 12 "
                                 "--latency-utterances 3")


@pytest.mark.ros  # the node's SLOW_LATENCY_MS: ddvlm_ros.emotion_node imports rclpy
def test_the_readme_quotes_what_fewer_turns_of_context_cost_and_save_from_the_context_turns_report():
    """reports/context_turns.json (python bench/context_turns.py): the WA-F1s and the times of an answer the README
    gives for max_context_turns, and how many of MELD test's utterances a shorter window reads less of."""
    from ddvlm_ros.emotion_node import SLOW_LATENCY_MS
    from ddvlm_ros.params import PARAMS_BY_NAME

    report = json.loads((REPO / "reports" / "context_turns.json").read_text())
    assert report["command"] == "python bench/context_turns.py"  # both splits, every utterance, 100 answers timed
    bench = load_bench("context_turns")
    assert PARAMS_BY_NAME["max_context_turns"].default == bench.DEFAULT_TURNS
    row = {(r["split"], r["max_context_turns"]): r for r in report["rows"]}
    timed = report["latency"]["rows"]
    readme = " ".join((REPO / "README.md").read_text().split())

    def against(split, k):
        paired = row[split, k]["against_default"]
        return f"{paired['difference']:+.2f}", f"{paired['low']:.2f} to {paired['high']:.2f}"

    assert (f"an answer took {timed['32']['ms']:.1f} ms with 32 turns (prompts of {timed['32']['mean_tokens']:.0f} "
            f"tokens on average), {timed['16']['ms']:.1f} ms with 16 ({timed['16']['ratio_to_default']:.2f}x) and "
            f"{timed['8']['ms']:.1f} ms with 8 ({timed['8']['ratio_to_default']:.2f}x) on the 2-core AMD EPYC that "
            f"ran the bench; with 32 turns that is above the {SLOW_LATENCY_MS:.0f} ms at which the status says "
            "`slow`") in readme
    assert timed["32"]["ms"] > SLOW_LATENCY_MS > timed["16"]["ms"]
    wa = {key: f"{r['wa_f1']:.2f}" for key, r in row.items()}
    (d16, i16), (d8, i8), (d4, _), (d1, i1) = (against("test", k) for k in (16, 8, 4, 1))
    assert (f"16 turns score WA-F1 {wa['test', 16]} against {wa['test', 32]} ({d16}, paired 95 % interval over the "
            f"dialogues {i16}), 8 turns {wa['test', 8]} ({d8}, {i8}), 4 turns {wa['test', 4]} ({d4}) and the "
            f"utterance alone {wa['test', 1]} ({d1}, {i1}); on dev {wa['dev', 16]}, {wa['dev', 8]}, {wa['dev', 4]} "
            f"and {wa['dev', 1]} against {wa['dev', 32]}") in readme
    from ddvlm_core.meld import dialogues

    lengths = [len(rows) for rows in dialogues("test").values()]
    assert f"MELD test's dialogues ({sum(lengths) / len(lengths):.1f} turns on average)" in readme
    full = bench.contexts_of("test", 32)[0]
    shorter = {k: sum(len(c) < len(f) for c, f in zip(bench.contexts_of("test", k)[0], full)) for k in (8, 16)}
    assert f"for {shorter[8]} of test's 2,610 utterances with 8 turns, for {shorter[16]} with 16" in readme


def test_the_readme_quotes_what_ending_the_turns_wins_from_the_turn_ends_report():
    """reports/turn_ends.json (python bench/turn_ends.py): the WA-F1s the README gives where it says that the node
    ends the turns of an ASR that does not punctuate."""
    report = json.loads((REPO / "reports" / "turn_ends.json").read_text())
    assert report["command"] == "python bench/turn_ends.py"  # both splits, every utterance
    wa_f1 = {(r["split"], r["unpunctuated"], r["turns_ended"]): f"{r['wa_f1']:.2f}" for r in report["rows"]}
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"On MELD test that is WA-F1 {wa_f1['test', True, True]} against {wa_f1['test', True, False]} read as it "
            f"is ({wa_f1['test', False, False]} in MELD's text; dev: {wa_f1['dev', True, True]} against "
            f"{wa_f1['dev', True, False]})") in readme
    dev, test = (r["against_read_as_it_is"] for r in report["rows"] if r["turns_ended"])
    ece = {r["turns_ended"]: f"{r['ece']:.2f}" for r in report["rows"] if r["split"] == "test" and r["unpunctuated"]}
    assert (f"a gain of {test['difference']:+.2f} whose 95 % interval over test's dialogues, {test['low']:.2f} to "
            f"{test['high']:.2f}, still holds 0 (dev: {dev['difference']:+.2f}, {dev['low']:.2f} to "
            f"{dev['high']:.2f}), "
            f"with a better calibrated confidence on both (ECE {ece[True]} % against {ece[False]} % on test)") in readme
    assert test["low"] <= 0 < dev["low"]  # what "still holds 0" says of test, and the dev interval does not
    for split in ("dev", "test"):  # "better calibrated on both"
        read, ended = (r["ece"] for r in report["rows"] if r["split"] == split and r["unpunctuated"])
        assert ended < read


def test_the_readme_quotes_the_default_gone_on_with_punctuation_dropout_from_its_reports():
    """reports/punctuation_dropout/cpu_from_default_punct30/ (the run's record and bench/turn_ends.py on its
    checkpoint) against reports/turn_ends.json (the default): the figures the README gives under "Going on from a
    checkpoint", and what it concludes from them."""
    folder = REPO / "reports" / "punctuation_dropout" / "cpu_from_default_punct30"
    run = json.loads((folder / "training.json").read_text())
    assert "--init_checkpoint=checkpoints/default --punctuation_dropout=0.3" in run["command"]
    best = run["stages"]["text"]["best"]
    reports = (folder / "turn_ends.json", REPO / "reports" / "turn_ends.json")  # this checkpoint's, the default's
    new, default = ({(r["unpunctuated"], r["turns_ended"]): r for r in json.loads(path.read_text())["rows"]
                     if r["split"] == "test"} for path in reports)
    assert new[False, False]["wa_f1"] == pytest.approx(best["test_wa_f1"], abs=0.005)  # the bench scores the run's
    f = {k: f"{r['wa_f1']:.2f}" for k, r in new.items()}
    d = {k: f"{r['wa_f1']:.2f}" for k, r in default.items()}
    ended = new[True, True]["against_read_as_it_is"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"it kept epoch {best['epoch']}'s EMA teacher (dev WA-F1 {best['dev_wa_f1']:.2f}). On MELD test it scores "
            f"WA-F1 {f[False, False]} in MELD's text, {f[True, False]} without punctuation read as it is and "
            f"{f[True, True]} with the turns ended, where the default scores {d[False, False]}, {d[True, False]} and "
            f"{d[True, True]}") in readme and best["kept"] == "ema"
    lost = default[False, False]["wa_f1"] - default[True, False]["wa_f1"]
    won = new[True, False]["wa_f1"] - default[True, False]["wa_f1"]
    assert f"wins back about {round(won)} of the {lost:.1f} points" in readme
    assert (f"ending its turns with a full stop costs it {-ended['difference']:.2f} (95 % interval over test's "
            f"dialogues {ended['low']:.2f} to {ended['high']:.2f})") in readme and ended["high"] < 0
    minutes = [round((h["train_seconds"] + h["eval_seconds"]) / 60) for h in run["stages"]["text"]["history"]]
    assert f"then 2 epochs of {minutes[0]} and {minutes[1]} min" in readme


@pytest.mark.ros
def test_the_executor_transitions_bench_runs_each_row_and_writes_its_report(tmp_path, tiny_text_checkpoint):
    """Each executor row, on the tiny model: transitions made through the service, the executor spinning after them
    where the node is as shipped (the before row may stop at any transition: it is a race), the report written."""
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "bench/executor_transitions.py", "--model-dir", tiny_text_checkpoint,
                           "--transitions", "6", "--seconds", "60", "--report-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "executor_transitions.json").read_text())["rows"]
    assert [(r["executor"], r["event_handlers"]) for r in rows] == [
        ("multi_threaded", True), ("multi_threaded", False), ("single_threaded", False)]
    assert all(r["transitions"] == 6 and r["executor_spinning"] and r["ended_by"] == "" for r in rows[1:])
    assert rows[0]["transitions"] == 6 or "InvalidHandle" in rows[0]["ended_by"]
    assert "| multi_threaded | none (as shipped) | 6 |" in (out / "executor_transitions.md").read_text()
