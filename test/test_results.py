"""training.results: every text-branch report in one table, and what `--sd_select=either` keeps, recomputed from
the scores a run recorded."""
import json
from pathlib import Path

import pytest

from training.results import either_choice, highest_test_score, main, summary
from test_training import tiny_cfg

REPO = Path(__file__).resolve().parents[1]


def history(*epochs):
    """Records (dev, test, teacher dev, teacher test) per epoch, as training.loop.fit writes them."""
    return [{"epoch": k, "dev_wa_f1": d, "test_wa_f1": t, "teacher_dev_wa_f1": td, "teacher_test_wa_f1": tt}
            for k, (d, t, td, tt) in enumerate(epochs, 1)]


def test_either_keeps_the_best_dev_model_of_every_epoch_ties_to_the_student_and_the_earlier_epoch():
    assert either_choice({"text_history": history((50, 55, 51, 57), (60, 62, 61, 64))}) == (61, 64)  # teacher
    assert either_choice({"text_history": history((60, 62, 60, 64), (59, 70, 59, 71))}) == (60, 62)  # ties
    assert either_choice({"text_history": [{"epoch": 1, "dev_wa_f1": 50, "test_wa_f1": 55}]}) is None  # no SD
    assert either_choice({}) is None


def test_the_test_ceiling_is_the_highest_test_score_of_any_epoch_student_or_teacher():
    runs = [{"text_history": history((50, 55, 51, 57), (60, 62, 61, 64))},
            {"text_history": history((55, 66, 50, 52))},  # a student epoch that dev did not pick
            {"text_history": [{"epoch": 1, "dev_wa_f1": 50, "test_wa_f1": 59}]}]  # no teacher recorded
    assert highest_test_score(runs) == 66
    assert highest_test_score(runs[:1]) == 64 and highest_test_score(runs[2:]) == 59
    assert highest_test_score([{"test_wa_f1": 70}]) is None  # no epochs recorded: no ceiling claimed


def test_either_recomputed_from_a_student_run_is_what_an_either_run_reports(tmp_path, tiny_roberta_dir):
    """Selection does not change training: the loop scores student and teacher every epoch, so the recorded
    scores of an sd_select=student run give exactly the model an sd_select=either run keeps."""
    from training.ablate import ROWS, run_rows

    sd_row = [r for r in ROWS if r.name == "text_sd"]
    runs = {select: run_rows(tiny_cfg(tmp_path / select, tiny_roberta_dir, epochs=3, sd_select=select), sd_row,
                             [0], log=lambda *_: None)[0]["runs"][0] for select in ("student", "either")}
    scores = [{k: v for k, v in record.items() if "wa_f1" in k} for run in runs.values()
              for record in run["text_history"]]
    assert scores[:3] == scores[3:] and len(scores) == 6  # the same trajectory: every epoch's scores equal
    assert runs["either"]["text_kept"] == "ema"  # here the teacher wins on dev: not the student's score again
    assert either_choice(runs["student"]) == (runs["either"]["text_dev_wa_f1"], runs["either"]["test_wa_f1"])


def report(path, mode, sd, no_sd, epochs=5, runs_epochs=None, teacher=None, no_sd_epoch1=60.0):
    """A report JSON as training.ablate writes it, with the text rows' runs (epoch 1: dev 60.0 in the SD runs,
    ``no_sd_epoch1`` in the no-SD runs)."""
    def runs(scores, with_teacher, first=60.0):
        return [{"seed": k, "test_wa_f1": t, "epochs_run": (runs_epochs or {}).get(k, epochs), "hardware": "a test GPU",
                 "text_history": history((first, t, 61.0, teacher[k])) if with_teacher else
                 [{"epoch": 1, "dev_wa_f1": first, "test_wa_f1": t}]} for k, t in enumerate(scores)]
    rows = [{"row": "text_sd", "encoder": "all-mpnet-base-v2", "runs": runs(sd, teacher is not None)},
            {"row": "text_no_sd", "encoder": "all-mpnet-base-v2", "runs": runs(no_sd, False, no_sd_epoch1)},
            {"row": "full", "encoder": "all-mpnet-base-v2", "not_run": "needs captions"}]
    config = {"text_mode": mode, "device": "cuda", "epochs": epochs, "batch_size": 16, "lr": 3e-5, "head_lr": 1e-3}
    path.write_text(json.dumps({"config": config, "rows": rows}))
    return path


def test_the_table_has_a_line_per_report_the_paper_and_whether_the_target_is_met(tmp_path, capsys):
    full = report(tmp_path / "full.json", "full", [63.0, 64.0, 62.0], [62.0, 62.5, 61.5], epochs=10,
                  runs_epochs={0: 5}, teacher=[64.0, 65.0, 66.0])
    frozen = report(tmp_path / "frozen.json", "frozen", [70.0, 70.0, 70.0], [69.0, 69.0, 69.0])
    empty = tmp_path / "captions_only.json"
    empty.write_text(json.dumps({"config": {}, "rows": [{"row": "full", "not_run": "needs captions"}]}))
    line = summary(full)
    assert line["gain"] == pytest.approx(63.0 - 62.0) and line["best_sd_run"] == 64.0
    assert line["either"] == [64.0, 65.0, 66.0]  # the teachers score higher on dev in every run
    assert line["test_ceiling"] == 66.0
    assert line["schedule"] == "10 epochs; budget stopped SD after 5, no SD after 5"  # seed 0's runs only
    assert summary(empty) is None
    assert main([str(full), str(frozen), str(empty), "--out", str(tmp_path / "table")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert ("| `full` | full | cuda (a test GPU) | 10 epochs; budget stopped SD after 5, no SD after 5 | 16 | 3e-05 | "
            "63.00 ± 1.00 (3) | 62.00 ± 0.50 (3) | +1.00 | 0.00 | 64.00 | 65.00 ± 1.00 (3) | 66.00 |") in table
    assert ("| paper, RoBERTa-large (Table 4) | full | GPU | Table 2 | 4 | 1e-05 | 67.13 | 66.46 | +0.67 | — | — | — | "
            "— |") in table
    assert "SD gain >= +0.5 over no SD, fine-tuned, mean of 3 seeds: met: +1.00 (`full`, epoch 1 identical" in table
    # a frozen backbone does not count for the target (a fine-tuned text branch); the either column does
    assert "SD >= 65.0, mean of 3 seeds: met; highest 3-seed mean 65.00 (`full`, either)." in table
    assert "No recorded epoch" not in table
    assert json.loads((tmp_path / "table.json").read_text())["reports"][0]["report"] == "frozen"
    report(full, "full", [63.0, 64.0, 62.0], [62.0, 62.5, 61.5])
    assert main([str(full), str(frozen), "--out", str(tmp_path / "short")]) == 0
    short = (tmp_path / "short.md").read_text()
    assert "not met (2.00 short); highest 3-seed mean 63.00 (`full`, SD). No recorded epoch of a fine-tuned SD " \
        "run reached 65.0 on test, even picked on test (highest 64.00, `full`)" in short  # frozen's 70 not counted
    report(full, "full", [63.0, 64.0, 62.0], [62.0, 62.5, 61.5], teacher=[60.0, 60.0, 65.5])
    assert main([str(full), "--out", str(tmp_path / "reachable")]) == 0  # a teacher epoch reached it on test
    reachable = (tmp_path / "reachable.md").read_text()
    assert "not met (2.00 short)" in reachable and "No recorded epoch" not in reachable
    assert main([str(empty), "--out", str(tmp_path / "none")]) == 2
    # the same gain from pairs whose CE-only epoch 1 already differed: kernel noise, not counted as met
    noisy = report(tmp_path / "noisy.json", "full", [63.0, 64.0, 62.0], [62.0, 62.5, 61.5], no_sd_epoch1=61.5)
    clean = report(tmp_path / "clean.json", "lora", [62.0, 62.0, 62.0], [62.2, 62.2, 62.2])
    assert summary(noisy)["epoch1_gap"] == pytest.approx(1.5) and summary(clean)["epoch1_gap"] == 0.0
    assert main([str(noisy), str(clean), str(frozen), "--out", str(tmp_path / "gain")]) == 0
    gain = (tmp_path / "gain.md").read_text()
    assert ("SD gain >= +0.5 over no SD, fine-tuned, mean of 3 seeds: not met; where each seed's two runs share "
            "epoch 1 exactly (the gain is SD's alone), the highest is -0.20 (`clean`). Higher gains come only from "
            "pairs not shown to share epoch 1: +1.00 (`noisy`, epoch 1, CE only in both, differed by up to 1.50 "
            "dev WA-F1).") in gain
    assert "| +1.00 | 1.50 |" in gain  # the frozen report's +1.00 (gap 0) does not count: not fine-tuned
    (tmp_path / "table.md").write_text("not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "quantization.json").write_text(json.dumps({"meta": {}, "rows": [{"row": "fp32"}]}))
    for bad, why in [("missing.json", "no such report"), ("table.md", "not JSON"),
                     ("list.json", "not an ablation report"), ("quantization.json", "not an ablation report")]:
        with pytest.raises(SystemExit) as exit_:  # a clear error naming the file, not a traceback
            main([str(tmp_path / bad), "--out", str(tmp_path / "none")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert why in err and bad in err, err


def test_the_committed_table_is_the_one_the_committed_reports_give(tmp_path):
    reports = sorted(str(p) for p in (REPO / "reports").glob("ablation*.json"))
    assert len(reports) >= 5 and main([*reports, "--out", str(tmp_path / "text_branch")]) == 0
    assert (tmp_path / "text_branch.md").read_text() == (REPO / "reports/text_branch.md").read_text(), \
        "reports/text_branch.md is stale: python -m training.results reports/ablation*.json"


def test_reports_name_batches_made_otherwise_than_by_fixed_length_buckets(tmp_path):
    from training.ablate import batches_text

    assert batches_text({}) == "" and batches_text({"bucket_megabatch": 0}) == ""  # every report so far
    assert batches_text({"length_bucketing": False, "bucket_megabatch": 50}) == " (random batches, not length-bucketed)"
    assert batches_text({"bucket_megabatch": 50, "punctuation_dropout": 0.3}) == (
        " (new length buckets each epoch, groups of 50 batches; 30% of the prompts unpunctuated each epoch)")
    path = report(tmp_path / "megabatch.json", "full", [63.0, 64.0, 62.0], [62.0, 62.5, 61.5])
    data = json.loads(path.read_text())
    data["config"]["bucket_megabatch"] = 50
    path.write_text(json.dumps(data))
    assert summary(path)["schedule"] == "5 epochs (new length buckets each epoch, groups of 50 batches)"


def test_a_report_whose_runs_recorded_test_predictions_gives_the_gain_its_interval(tmp_path):
    """Two seed pairs on 40 dialogues: the SD runs answer 60 utterances right that the no-SD runs got wrong. The
    table shows the mean gain with its interval over the dialogues, as bootstrap_wa_f1_difference computes it."""
    import numpy as np

    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    rng = np.random.default_rng(4)
    gold = rng.integers(0, 7, 400).tolist()
    dialogues = [k // 10 for k in range(400)]
    no_sd = [np.where(rng.random(400) < 0.5, gold, rng.integers(0, 7, 400)) for _ in range(2)]
    sd = [np.where(np.arange(400) < 60, gold, answers) for answers in no_sd]
    path = report(tmp_path / "r.json", "full", [0.0, 0.0], [0.0, 0.0])
    data = json.loads(path.read_text())
    from training.ablate import label_string, run_lengths

    for row, answers in zip(data["rows"], (sd, no_sd)):
        for run, predicted in zip(row["runs"], answers):
            run |= {"test_predictions": label_string(predicted.tolist()), "test_gold": label_string(gold),
                    "test_dialogues": run_lengths(dialogues)}
    path.write_text(json.dumps(data))
    expected = bootstrap_wa_f1_difference(gold, [a.tolist() for a in no_sd], [a.tolist() for a in sd], dialogues)
    assert summary(path)["gain_interval"] == expected and expected["low"] > 0
    assert main([str(path), "--out", str(tmp_path / "t")]) == 0
    assert f"[{expected['low']:+.2f}, {expected['high']:+.2f}]" in (tmp_path / "t.md").read_text()


def test_test_answers_are_kept_compactly_and_read_back_unchanged():
    from training.ablate import from_run_lengths, label_string, labels_of, run_lengths

    assert label_string([0, 6, 3, 3]) == "0633" and labels_of("0633") == [0, 6, 3, 3]
    dialogues = [0, 0, 0, 1, 2, 2, 0]  # a dialogue met again later is a new run
    assert run_lengths(dialogues) == "0:3,1:1,2:2,0:1" and from_run_lengths(run_lengths(dialogues)) == dialogues
    assert run_lengths([]) == "" and from_run_lengths("") == []


def test_the_readme_quotes_the_frozen_runs_sd_gain_and_its_interval():
    import re

    from training.ablate import gain_interval

    rows = {r["row"]: r for r in json.loads((REPO / "reports" / "ablation_frozen_either.json").read_text())["rows"]}
    d = gain_interval(rows["text_sd"], rows["text_no_sd"])
    assert d["pairs"] == 3 and d["units"] == 280 and d["high"] < 0
    readme = " ".join((REPO / "README.md").read_text().split())
    said = re.search(r"There SD scores ([\d.]+) ± ([\d.]+) and no SD ([\d.]+) ± ([\d.]+): a gain of (-?[\d.]+) whose "
                     r"95 % interval over the test dialogues is (-?[\d.]+) to (-?[\d.]+)", readme)
    sd, no_sd = rows["text_sd"], rows["text_no_sd"]
    measured = (sd["mean"], sd["std"], no_sd["mean"], no_sd["std"], d["difference"], d["low"], d["high"])
    assert [float(x) for x in said.groups()] == [round(v, 2) for v in measured]


def test_the_readme_quotes_table_4s_speaker_token_effect_and_its_interval():
    import re

    from training.ablate import gain_interval

    rows = {r["row"]: r for r in json.loads((REPO / "reports" / "ablation.json").read_text())["rows"]}
    d = gain_interval(rows["text_sd"], rows["text_no_speakers"])
    assert d["pairs"] == 3 and d["units"] == 280
    report = (REPO / "reports" / "ablation.md").read_text()
    assert f"mean gain {d['difference']:+.2f}, 95 % interval {d['low']:.2f} to {d['high']:.2f}" in report
    readme = " ".join((REPO / "README.md").read_text().split())
    said = re.search(r"SD without speaker tokens ([\d.]+) ± ([\d.]+), so speaker tokens change WA-F1 by (-?[\d.]+), "
                     r"whose 95 % interval over the test dialogues is (-?[\d.]+) to (-?[\d.]+)", readme)
    none = rows["text_no_speakers"]
    measured = (none["mean"], none["std"], d["difference"], d["low"], d["high"])
    assert [float(x) for x in said.groups()] == [round(v, 2) for v in measured]
