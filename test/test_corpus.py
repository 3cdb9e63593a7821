"""Your own dialogues as a corpus: a study's answers files -> MELD's CSV files (python -m ddvlm_ros.corpus), read
back by ddvlm_core.meld, trained on (corpus: own) and scored (training.evaluate --corpus) on a tiny real model."""
import csv
import json
from pathlib import Path

import pytest

from ddvlm_core.context import PromptBuilder
from ddvlm_core.labels import LABELS
from ddvlm_core.meld import UNLABELLED, meld_dir, read_split
from ddvlm_ros.corpus import clock, main, write_corpus
from training.data import build_examples

LINES = [("ana", "I got the job!", "joy"), ("robot", "Congratulations!", None),
         ("ana", "Thanks, I can't believe it.", "surprise"), ("ben", "Whatever.", "disgust")]


def write_answers(path, conversations):
    """An answers file as ``replay.answer_records`` writes it: per conversation, (speaker, transcript, gold) lines,
    keyed conversation/number, spans 2 s apart, the robot's a context-only turn; answers left out (the corpus reads
    none of them)."""
    records, k = [], 0
    for conversation, lines in conversations.items():
        for speaker, text, gold in lines:
            k += 1
            if speaker == "robot":  # a turn that only gave context, as the replay writes it
                records.append({"key": f"{conversation}/{k}", "speaker_id": speaker, "context_only": True,
                                "transcript": text, "gold": None, "prediction": None, "confidence": None})
                continue
            records.append({"key": f"{conversation}/{k}", "speaker_id": speaker, "prediction": "neutral",
                            "confidence": 0.5, "speaker_token": "<s1>", "transcript": text, "gold": gold,
                            "span_s": [2.0 * k, 2.0 * k + 1.5], "text": None, "refined": None, "revised": None})
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def study(tmp_path, sessions=("S01", "S02", "S03", "S04")):
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    return [write_answers(folder / f"{s}.jsonl", {"default": LINES, "lab": LINES[:2]}) for s in sessions]


def test_sessions_become_whole_dialogues_of_one_split_each_in_meld_columns(tmp_path):
    answers = study(tmp_path)
    counts = write_corpus(answers, tmp_path / "corpus", dev={"S03"}, test={"S04"})
    assert counts == {"train": {"sessions": 2, "dialogues": 4, "utterances": 12, "labelled": 8, "captioned": 0},
                      "dev": {"sessions": 1, "dialogues": 2, "utterances": 6, "labelled": 4, "captioned": 0},
                      "test": {"sessions": 1, "dialogues": 2, "utterances": 6, "labelled": 4, "captioned": 0}}
    assert not (tmp_path / "corpus" / "captions.jsonl").exists()  # replayed without a captioner
    rows = read_split("dev", tmp_path / "corpus")
    assert [(r.dialogue_id, r.utterance_id, r.speaker, r.text, r.label) for r in rows] == [
        (0, 0, "ana", "I got the job!", 4), (0, 1, "robot", "Congratulations!", UNLABELLED),
        (0, 2, "ana", "Thanks, I can't believe it.", 1), (0, 3, "ben", "Whatever.", 5),
        (1, 0, "ana", "I got the job!", 4), (1, 1, "robot", "Congratulations!", UNLABELLED)]
    assert (rows[0].start, rows[0].end) == ("00:00:02,000", "00:00:03,500")
    with open(tmp_path / "corpus" / "train_sent_emo.csv", encoding="utf-8", newline="") as fh:
        sessions = {(r["Session"], r["Dialogue_ID"]) for r in csv.DictReader(fh)}
    assert sessions == {("S01", "0"), ("S01", "1"), ("S02", "2"), ("S02", "3")}  # numbered across the split
    # the unlabelled turn is context for the next one, and no example of its own
    examples = build_examples("dev", PromptBuilder(_tokenizer()), str(tmp_path / "corpus"))
    assert [e.key for e in examples] == ["dev/dia0_utt0", "dev/dia0_utt2", "dev/dia0_utt3", "dev/dia1_utt0"]
    assert _tokenizer().decode(examples[1].input_ids) == (
        "<s> <s1> : i got the job! <s2> : congratulations! <s1> : thanks, i can ' t believe it. now <s1> feels "
        "<mask> </s>")


def _tokenizer():
    from ddvlm_core.assets import resolve_model
    from ddvlm_core.text import load_tokenizer

    return load_tokenizer(resolve_model("all-mpnet-base-v2"))


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's error: the usage and the reason on stderr
        return e.code


def test_what_cannot_make_a_corpus_is_refused_with_the_reason(tmp_path, capsys):
    answers = study(tmp_path, ("S01", "S02"))
    out = str(tmp_path / "corpus")
    assert exit_code([*map(str, answers), "--out", out, "--dev", "S02", "--test", "S09"]) == 2
    assert "--dev / --test name sessions without an answers file: ['S09']" in capsys.readouterr().err
    assert exit_code([*map(str, answers), "--out", out, "--dev", "S02"]) == 2  # no session left for test
    assert "no labelled utterance in test" in capsys.readouterr().err
    bad = tmp_path / "answers" / "S03.jsonl"
    bad.write_text(json.dumps({"key": "default/1", "transcript": "Hi", "gold": "happy"}) + "\n")
    assert exit_code([*map(str, answers), str(bad), "--out", out, "--dev", "S02", "--test", "S03"]) == 2
    assert "S03.jsonl, line 1: not a replay answer record (ValueError: unknown emotion label 'happy'" in (
        capsys.readouterr().err)
    assert not (tmp_path / "corpus").exists()
    answers = study(tmp_path, ("S01", "S02", "S03"))
    assert exit_code([*map(str, answers), "--out", out, "--dev", "S02", "--test", "S03"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"train: 1 sessions, 2 dialogues, 6 utterances (4 labelled) -> {tmp_path / 'corpus' / 'train_sent_emo.csv'}")


def test_clock_writes_meld_times():
    assert clock(3723.0456) == "01:02:03,046" and clock(None) == "" and clock(-0.2) == "00:00:00,000"


def test_a_run_on_your_own_corpus_trains_and_is_scored_on_its_own_dev_and_test(tmp_path, tiny_roberta_dir):
    """corpus: own lifts MELD's 2,610-utterance test check (its test has 4 labelled utterances) and scores every
    labelled utterance of its dev and test; the checkpoint's manifest says what it was trained on, and
    training.evaluate --corpus scores it on the same."""
    from test_training import tiny_cfg
    from training.evaluate import evaluate_checkpoint
    from training.loop import run

    write_corpus(study(tmp_path), tmp_path / "corpus", dev={"S03"}, test={"S04"})
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, corpus="own", meld_dir=str(tmp_path / "corpus"), limit_dialogues=0)
    results = run(cfg, log=lambda *_: None)
    best = results["stages"]["text"]["best"]
    assert (best["dev"]["n"], best["test"]["n"]) == (4, 4)
    assert results["test_examples"]["gold"] == [4, 1, 5, 4]
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "manifest.json").read_text())
    assert (manifest["run"]["corpus"], manifest["run"]["meld_dir"]) == ("own", str(tmp_path / "corpus"))
    assert manifest["calibration"]["fitted_on"] == f"{tmp_path / 'corpus'} dev"  # what the node's diagnostics say
    scored = evaluate_checkpoint(tmp_path / "run" / "checkpoint", corpus=tmp_path / "corpus", log=lambda *_: None)
    assert scored["corpus"] == str(tmp_path / "corpus")
    assert [scored["splits"][s]["n"] for s in ("dev", "test")] == [4, 4]
    assert scored["splits"]["test"]["predictions"] == best["test"]["predictions"]  # the run's own test answers


def test_a_corpus_that_cannot_be_trained_on_is_refused_before_any_work(tmp_path, tiny_roberta_dir):
    import shutil

    from test_training import tiny_cfg
    from training.config import ConfigError
    from training.loop import preflight

    cut = tmp_path / "meld_cut"  # a copy of MELD cut short: scored as if it were MELD, until the evaluator refused
    cut.mkdir()
    for split in ("train", "dev", "test"):
        source = (meld_dir() / f"{split}_sent_emo.csv").read_text(encoding="utf-8")
        (cut / f"{split}_sent_emo.csv").write_text("\n".join(source.splitlines()[:40]) + "\n", encoding="utf-8")
    write_corpus(study(tmp_path), tmp_path / "corpus", dev={"S03"}, test={"S04"})
    broken = tmp_path / "broken"
    broken.mkdir()
    for split in ("train", "dev", "test"):
        (broken / f"{split}_sent_emo.csv").write_text(
            (tmp_path / "corpus" / f"{split}_sent_emo.csv").read_text(encoding="utf-8"), encoding="utf-8")
    text = (broken / "dev_sent_emo.csv").read_text(encoding="utf-8").replace(",disgust,", ",bored,")
    (broken / "dev_sent_emo.csv").write_text(text, encoding="utf-8")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for split in ("train", "dev", "test"):
        rows = (tmp_path / "corpus" / f"{split}_sent_emo.csv").read_text(encoding="utf-8")
        if split == "test":
            rows = "Dialogue_ID,Utterance_ID,Speaker,Utterance,Emotion\n0,0,ana,Hello,\n"
        (unlabelled / f"{split}_sent_emo.csv").write_text(rows, encoding="utf-8")
    window = tmp_path / "window"  # a corpus whose reading is broken
    shutil.copytree(tmp_path / "corpus", window)
    (window / "corpus.json").write_text('{"max_context_turns": 0}')
    cases = [({"meld_dir": str(cut)}, "train has 39 utterances, MELD's 9989 \\(a corpus of your own: corpus: own\\)"),
             ({"meld_dir": str(window), "corpus": "own"}, "max_context_turns must be an integer >= 1, got 0"),
             ({"meld_dir": str(broken), "corpus": "own"}, "dev_sent_emo.csv, line 5: unknown emotion label 'bored'"),
             ({"meld_dir": str(unlabelled), "corpus": "own"}, "test_sent_emo.csv has no utterance with an Emotion")]
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            preflight(tiny_cfg(tmp_path, tiny_roberta_dir, **over))
    with pytest.raises(ValueError, match="corpus: own needs meld_dir"):
        tiny_cfg(tmp_path, tiny_roberta_dir, corpus="own")
    with pytest.raises(ValueError, match="corpus must be one of"):
        tiny_cfg(tmp_path, tiny_roberta_dir, corpus="friends")
    preflight(tiny_cfg(tmp_path, tiny_roberta_dir, meld_dir=str(tmp_path / "corpus"), corpus="own"))  # passes


def test_the_ablations_run_on_your_own_corpus_and_report_beside_its_runs_without_the_papers_numbers(
        tmp_path, tiny_roberta_dir, capsys):
    """A study's corpus gets Table 4's rows as MELD does (each a configuration of the one loop, per seed): scored on
    its own test, reported under the run directory (not reports/, whose MELD tables the README cites) with no paper
    number beside them, and kept out of training.results' table of MELD scores."""
    import hashlib

    from training.ablate import main as ablate
    from training.results import main as results

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("ablation*"))}

    meld_reports = digest(Path("reports"))
    write_corpus(study(tmp_path), tmp_path / "corpus", dev={"S03"}, test={"S04"})
    run_dir = tmp_path / "run"
    args = [f"--text_backbone={tiny_roberta_dir}", "--corpus=own", f"--meld_dir={tmp_path / 'corpus'}",
            f"--run_dir={run_dir}", f"--feature_cache={tmp_path / 'features'}", "--text_mode=frozen",
            "--head_lr=1e-2", "--epochs=2", "--batch_size=4", "--eval_batch_size=8"]
    assert ablate(["--rows", "full,text_sd,text_no_sd", "--seeds", "0,1", *args]) == 0
    capsys.readouterr()
    report = json.loads((run_dir / "ablation" / "report.json").read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert rows["full"]["not_run"] == "needs captions; caption_source: none"
    for name in ("text_sd", "text_no_sd"):
        assert rows[name]["paper"] is None and [r["seed"] for r in rows[name]["runs"]] == [0, 1]
        for run in rows[name]["runs"]:  # each the run's own score on the corpus's 4 labelled test utterances
            saved = json.loads((run_dir / "ablation" / name / f"seed{run['seed']}" / "results.json").read_text())
            assert run["test_wa_f1"] == saved["stages"]["text"]["best"]["test"]["wa_f1"]
            assert run["test_gold"] == "4154"
    markdown = (run_dir / "ablation" / "report.md").read_text()
    assert markdown.startswith(f"# Table 4's ablations on your corpus {tmp_path / 'corpus'} (test WA-F1, model chosen "
                               "on its dev)\n")
    assert "| row | ours (mean ± std) | seeds | mode | encoder | captions |" in markdown
    sd = rows["text_sd"]
    assert f"| Self-Distillation Only Text | {sd['mean']:.2f} ± {sd['std']:.2f} | 2 | frozen |" in markdown
    gain = sd["mean"] - rows["text_no_sd"]["mean"]
    assert f"Self-distillation gain on the text branch: {gain:+.2f} WA-F1.\n" in markdown  # no paper's +0.67
    assert "paper" not in markdown.split("\n| row |")[1]
    assert digest(Path("reports")) == meld_reports  # MELD's reports untouched
    with pytest.raises(SystemExit):
        results([str(run_dir / "ablation" / "report.json"), "--out", str(tmp_path / "text_branch")])
    assert f"ablations on your corpus {tmp_path / 'corpus'}, not on MELD" in capsys.readouterr().err


@pytest.mark.ros
def test_real_replays_of_meld_bags_make_a_corpus_of_their_dialogues(tmp_path, tiny_text_checkpoint):
    """Three MELD test dialogues written as bags and replayed with --answers, as a study's sessions: the corpus holds
    each dialogue's turns, speakers and labels as MELD has them, and a checkpoint is scored on its test session."""
    from ddvlm_core.meld import dialogues
    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main as replay
    from training.evaluate import evaluate_checkpoint

    sessions = {"S1": 0, "S2": 1, "S3": 2}  # session -> MELD test dialogue
    for name, dialogue in sessions.items():
        bag = write_meld_bag(tmp_path / name, "test", [dialogue])
        assert replay([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "40", "--param",
                       "input_timeout_s:=0.0", "--answers", str(tmp_path / f"{name}.jsonl")]) == 0
    assert main([str(tmp_path / f"{name}.jsonl") for name in sessions] + [
        "--out", str(tmp_path / "corpus"), "--dev", "S2", "--test", "S3"]) == 0
    meld = dialogues("test")
    for split, name in (("train", "S1"), ("dev", "S2"), ("test", "S3")):
        rows = read_split(split, tmp_path / "corpus")
        assert [(r.speaker, r.text, r.label) for r in rows] == [
            (u.speaker, u.text, u.label) for u in meld[sessions[name]]]
        assert all(r.dialogue_id == 0 for r in rows) and [r.utterance_id for r in rows] == list(range(len(rows)))
    scored = evaluate_checkpoint(tiny_text_checkpoint, corpus=tmp_path / "corpus", log=lambda *_: None)
    assert scored["splits"]["test"]["n"] == len(meld[2])
    replayed = [json.loads(line) for line in (tmp_path / "S3.jsonl").read_text().splitlines()]
    # the prompts training builds from the corpus are the node's: the same answers as the replay, utterance for
    # utterance (the checkpoint's temperature changes no top label)
    assert scored["splits"]["test"]["predictions"] == [LABELS.index(r["prediction"]) for r in replayed]


@pytest.mark.ros
def test_sessions_replayed_with_a_captioner_train_the_visual_branch_on_the_robots_captions(
        tmp_path, tiny_roberta_dir, tiny_visual_checkpoint):
    """MELD bags with camera frames replayed through a fused checkpoint and the cue captioner: the corpus holds each
    utterance's caption, the one its refined answer was fused with, as a caption record of that captioner; a run on
    it trains the text, visual (CMKD) and fusion stages, and its checkpoint names the captioner, so that the node
    checks it against its own."""
    from test_training import tiny_cfg

    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main as replay
    from training.captions import read_captions
    from training.loop import run

    sessions = {"S1": [0, 3], "S2": [1], "S3": [2]}
    for name, ids in sessions.items():
        bag = write_meld_bag(tmp_path / name, "test", ids, frames="synthetic", fps=4.0)
        assert replay([str(bag), "--model-dir", tiny_visual_checkpoint, "--captioner", "cue", "--speed", "10",
                       "--param", "input_timeout_s:=0.0", "--answers", str(tmp_path / f"{name}.jsonl")]) == 0
    assert main([str(tmp_path / f"{name}.jsonl") for name in sessions] + [
        "--out", str(tmp_path / "corpus"), "--dev", "S2", "--test", "S3"]) == 0
    captions = read_captions(tmp_path / "corpus" / "captions.jsonl")
    replayed = [json.loads(line) for line in (tmp_path / "S3.jsonl").read_text().splitlines()]
    assert {r["captioner"] for r in captions.values()} == {replayed[0]["captioner"]} == {"cue-fallback:frames=4"}
    tested = [captions[f"test/dia0_utt{k}"] for k in range(len(replayed))]
    assert [c["caption"] for c in tested] == [(r["refined"] or {}).get("caption", "") for r in replayed]
    assert sum(c["status"] == "ok" for c in captions.values()) > len(captions) // 2  # most were captioned
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, corpus="own", meld_dir=str(tmp_path / "corpus"), limit_dialogues=0,
                   caption_source=str(tmp_path / "corpus" / "captions.jsonl"), stages="text,visual,fusion",
                   epochs=1)
    results = run(cfg, log=lambda *_: None)
    assert results["captions"]["captioner"] == "cue-fallback:frames=4"
    assert results["captions"]["test"]["captioned"] == sum(c["status"] == "ok" for c in tested)
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "manifest.json").read_text())
    assert set(manifest["modules"]) == {"text_head", "visual_head", "fusion"}
    assert manifest["captioner"] == "cue-fallback:frames=4"


def test_a_checkpoint_is_calibrated_on_your_own_sessions_as_the_robots_asr_wrote_them(tmp_path, tiny_text_checkpoint):
    """training.calibrate --corpus: the temperatures fitted on the corpus's dev, the text one on the answers not
    flagged unpunctuated and the unpunctuated one on those that are (transcripts as written, not MELD rewritten);
    the manifest says what they were fitted on."""
    import shutil

    from ddvlm_core.calibration import describe
    from ddvlm_core.checkpoint import read_manifest, update_manifest
    from ddvlm_core.model import DDVLMConfig
    from training.calibrate import main as calibrate

    answers = study(tmp_path)
    unpunctuated = [("ana", "i got the job i cant believe it", "joy"), ("ben", "whatever man who cares", "disgust")]
    write_answers(answers[2], {"default": LINES + unpunctuated, "lab": LINES[:2] + unpunctuated})  # S03: dev
    write_corpus(answers, tmp_path / "corpus", dev={"S03"}, test={"S04"})
    checkpoint = shutil.copytree(tiny_text_checkpoint, tmp_path / "checkpoint")
    update_manifest(checkpoint, config={"text_temperature": 1.3})  # as if fitted on MELD dev: the score to beat
    assert calibrate([str(checkpoint), "--corpus", str(tmp_path / "corpus"), "--report-dir", str(tmp_path),
                      "--name", "study_calibration"]) == 0
    report = json.loads((tmp_path / "study_calibration.json").read_text())
    assert report["fitted_on"] == f"{tmp_path / 'corpus'} dev"
    assert [report["branches"][b]["splits"]["dev"]["n"] for b in ("text", "unpunctuated")] == [4, 4]
    assert report["branches"]["unpunctuated"]["splits"]["test"]["n"] == 0  # S04's transcripts all punctuated
    for branch in ("text", "unpunctuated"):  # each scored at the checkpoint's temperature too, before it is refitted
        assert report["branches"][branch]["splits"]["dev"]["text_temperature"]["temperature"] == 1.3
    manifest = read_manifest(checkpoint)
    assert manifest["calibration"]["fitted_on"] == f"{tmp_path / 'corpus'} dev"
    config = DDVLMConfig(**{k: v for k, v in manifest["config"].items() if k in DDVLMConfig.__dataclass_fields__})
    assert describe(config, manifest["calibration"]).endswith(f"fitted on {tmp_path / 'corpus'} dev")
    assert f"--corpus {tmp_path / 'corpus'}" in (tmp_path / "study_calibration.md").read_text()


@pytest.mark.ros
def test_the_study_corpus_bench_finds_the_evaluator_answering_as_the_node_did(tmp_path, tiny_text_checkpoint):
    """bench/study_corpus.py on the tiny checkpoint, one dialogue per session: every utterance of each split is
    answered alike by the node (replay) and the evaluator (corpus), and the calibration is reported."""
    from bench_modules import load_bench

    bench = load_bench("study_corpus")
    assert bench.main(["--sessions", "3", "--dialogues", "1", "--model-dir", tiny_text_checkpoint, "--speed", "40",
                       "--report-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "study_corpus.json").read_text())
    assert [data["same_prompts"][s]["n"] for s in ("train", "dev", "test")] == [
        data["corpus"][s]["labelled"] for s in ("train", "dev", "test")]
    assert all(row["alike"] == row["n"] > 0 and row["node_wa_f1"] == pytest.approx(row["evaluator_wa_f1"])
               for row in data["same_prompts"].values())
    assert "refitted" in (tmp_path / "study_corpus.md").read_text()


def test_the_readme_quotes_the_study_corpus_report():
    """The calibration numbers the README gives for three replayed MELD sessions are reports/study_corpus.json's."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    data = json.loads((repo / "reports" / "study_corpus.json").read_text())
    text = data["calibration"]["branches"]["text"]
    dev, test = text["splits"]["dev"], text["splits"]["test"]
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"dev {dev['n']} utterances: T {text['temperature']:.3f} refitted against the shipped "
            f"{test['text_temperature']['temperature']:.3f}, test ECE {test['calibrated']['ece']:.2f} % against "
            f"{test['text_temperature']['ece']:.2f} %") in readme
    alike = sum(row["alike"] for row in data["same_prompts"].values())
    total = sum(row["n"] for row in data["same_prompts"].values())
    assert f"{alike} of its {total} utterances" in readme


@pytest.mark.ros
def test_a_corpus_reads_each_dialogue_as_the_node_did_its_context_window_and_new_contexts(
        tmp_path, tiny_text_checkpoint):
    """Sessions replayed with the node reading 3 turns at most (max_context_turns) and starting a new context after
    4 s of silence (idle_timeout_s): the corpus splits each conversation where the node began anew and says it read
    3 turns (corpus.json), so the evaluator, building its prompts from the corpus, answers every utterance as the
    node did."""
    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main as replay
    from training.evaluate import evaluate_checkpoint

    sessions = {"S1": 9, "S2": 3, "S3": 2}  # MELD test dialogues of 18, 7 and 11 turns, with pauses of seconds
    for name, dialogue in sessions.items():
        bag = write_meld_bag(tmp_path / name, "test", [dialogue])
        assert replay([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--param",
                       "input_timeout_s:=0.0", "--param", "max_context_turns:=3", "--param", "idle_timeout_s:=4.0",
                       "--answers", str(tmp_path / f"{name}.jsonl")]) == 0
    assert main([str(tmp_path / f"{name}.jsonl") for name in sessions] + [
        "--out", str(tmp_path / "corpus"), "--dev", "S2", "--test", "S3"]) == 0
    assert json.loads((tmp_path / "corpus" / "corpus.json").read_text()) == {"max_context_turns": 3}
    replayed = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
                for name in sessions}
    assert any(r["context"].endswith("#1") for records in replayed.values() for r in records)  # a new context
    assert len(read_split("train", tmp_path / "corpus")) == 18  # a dialogue per context, every turn
    assert len({r.dialogue_id for r in read_split("train", tmp_path / "corpus")}) == len(
        {r["context"] for r in replayed["S1"]}) > 1
    scored = evaluate_checkpoint(tiny_text_checkpoint, ("train", "dev", "test"), corpus=tmp_path / "corpus",
                                 log=lambda *_: None)
    for split, name in (("train", "S1"), ("dev", "S2"), ("test", "S3")):
        assert scored["splits"][split]["predictions"] == [LABELS.index(r["prediction"]) for r in replayed[name]]
