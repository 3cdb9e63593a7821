"""MELD.Raw clips -> captions -> the visual and fusion stages, on clips these tests write with OpenCV (no MELD
video exists on this machine): the clip reader, the manifest check of MELD's known problem clips, the resumable
and shardable captioning run, and the multimodal training stages on its captions."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ddvlm_core.captioner import WindowCaptioner, filter_emotion_words
from ddvlm_core.meld import parse_time
from training.captions import (caption_run, captioner_id, main, make_captioner, parse_shard, read_captions,
                               utterances)
from training.video import (SPLIT_DIRS, ClipStatus, check_clip, duration_of, manifest, manifest_report, opened,
                            read_clip_frames)

REPO = Path(__file__).resolve().parents[1]
FPS = 10
MISSING, UNREADABLE, TOO_LONG = "train/dia0_utt1", "dev/dia0_utt0", "test/dia0_utt0"  # MELD has each kind


def write_clip(path: Path, seconds: float) -> None:
    """A 64 x 48 clip of a moving disc, ``seconds`` long at 10 fps."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(max(2, round(seconds * FPS))):
        frame = np.zeros((48, 64, 3), np.uint8)
        cv2.circle(frame, (8 + (3 * i) % 48, 24), 6, (40, 200, 90), -1)
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def meld_raw(tmp_path_factory):
    """MELD.Raw for the first 2 dialogues of each split, with one missing, one unreadable and one too-long clip."""
    root = tmp_path_factory.mktemp("MELD.Raw")
    for u in utterances(["train", "dev", "test"], limit_dialogues=2):
        folder = root / SPLIT_DIRS[u.split]
        folder.mkdir(exist_ok=True)
        path = folder / f"dia{u.dialogue_id}_utt{u.utterance_id}.mp4"
        if u.key == MISSING:
            continue
        if u.key == UNREADABLE:
            path.write_bytes(b"\x00\x01 not an mp4 " * 40)
            continue
        seconds = parse_time(u.end) - parse_time(u.start)
        write_clip(path, seconds + (60 if u.key == TOO_LONG else 0))  # test clips run minutes too long
    return root


def test_clip_reader_samples_frames_and_the_manifest_finds_the_problem_clips(meld_raw):
    todo = utterances(["train", "dev", "test"], limit_dialogues=2)
    first = todo[0]
    path = meld_raw / "train_splits" / f"dia{first.dialogue_id}_utt{first.utterance_id}.mp4"
    frames = read_clip_frames(path, 4)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert frames[0][24, 8 + 0].tolist() == pytest.approx([90, 200, 40], abs=40)  # RGB, not OpenCV's BGR
    expected = parse_time(first.end) - parse_time(first.start)
    with opened(path) as cap:
        duration = duration_of(cap, path)
    assert duration == pytest.approx(max(2, round(expected * FPS)) / FPS, abs=1e-6)
    with pytest.raises(ValueError, match="not a readable video"):
        read_clip_frames(meld_raw / "dev_splits_complete" / "dia0_utt0.mp4", 4)
    statuses = {s.key: s for s in manifest(meld_raw, todo)}
    assert statuses[MISSING].status == "missing" and statuses[UNREADABLE].status == "unreadable"
    assert statuses[TOO_LONG].status == "duration_mismatch" and "CSV" in statuses[TOO_LONG].detail
    report = manifest_report(list(statuses.values()))
    assert report["counts"] == {"ok": len(todo) - 3, "missing": 1, "unreadable": 1, "duration_mismatch": 1}
    assert {p["key"] for p in report["problems"]} == {MISSING, UNREADABLE, TOO_LONG}


def test_a_test_clip_minutes_too_long_is_replaced_by_its_re_cut_twin(tmp_path):
    """MELD.Raw's test folder holds re-cut twins (final_videos_testdia{D}_utt{U}.mp4) of clips minutes too long."""
    first, second, third = utterances(["test"], limit_dialogues=1)[:3]
    folder = tmp_path / SPLIT_DIRS["test"]
    folder.mkdir()
    for u, plain, twin in ((first, 60, 0), (second, None, 0), (third, 60, 90)):  # seconds too long; None: absent
        seconds = parse_time(u.end) - parse_time(u.start)
        if plain is not None:
            write_clip(folder / f"dia{u.dialogue_id}_utt{u.utterance_id}.mp4", seconds + plain)
        write_clip(folder / f"final_videos_testdia{u.dialogue_id}_utt{u.utterance_id}.mp4", seconds + twin)
    status, frames = check_clip(tmp_path, first, 4)
    assert status.status == "ok" and len(frames) == 4
    assert status.detail.startswith("final_videos_testdia0_utt0.mp4, not dia0_utt0.mp4: duration_mismatch (clip ")
    assert check_clip(tmp_path, second, 2)[0] == ClipStatus("test/dia0_utt1", "ok", "final_videos_testdia0_utt1.mp4")
    status, frames = check_clip(tmp_path, third, 4)
    assert status.status == "duration_mismatch" and frames == []
    assert "dia0_utt2.mp4: duration_mismatch" in status.detail and "final_videos_testdia0_utt2.mp4" in status.detail
    report = caption_run(make_captioner("cue-fallback"), tmp_path, [first, second, third], tmp_path / "out",
                         log=lambda *_: None)
    assert report["counts"] == {"ok": 2, "duration_mismatch": 1}
    records = read_captions(tmp_path / "out")
    assert records[first.key]["caption"] and records[first.key]["detail"].startswith("final_videos_testdia0_utt0.mp4")


def test_a_clip_whose_frames_cannot_be_decoded_passes_the_manifest_but_is_recorded_unreadable(tmp_path):
    u = utterances(["dev"], limit_dialogues=1)[0]
    (tmp_path / SPLIT_DIRS["dev"]).mkdir()
    path = tmp_path / SPLIT_DIRS["dev"] / f"dia{u.dialogue_id}_utt{u.utterance_id}.mp4"
    write_clip(path, parse_time(u.end) - parse_time(u.start))
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)  # the coded frames zeroed, the container (duration) intact
    path.write_bytes(bytes(data))
    assert manifest(tmp_path, [u])[0].status == "ok"  # the check opens the clip, it does not decode it
    status, frames = check_clip(tmp_path, u, 4)
    assert status.status == "unreadable" and "no frame could be decoded" in status.detail and frames == []
    report = caption_run(make_captioner("cue-fallback"), tmp_path, [u], tmp_path / "out", log=lambda *_: None)
    assert report["counts"] == {"unreadable": 1}
    assert read_captions(tmp_path / "out")[u.key]["status"] == "unreadable"


def test_captioning_run_records_every_utterance_and_lists_the_clips_it_skipped(meld_raw, tmp_path):
    out = tmp_path / "captions"
    args = ["--video_dir", str(meld_raw), "--captioner", "cue-fallback", "--limit_dialogues", "2", "--out", str(out)]
    assert main(args) == 0
    records = read_captions(out)
    todo = utterances(["train", "dev", "test"], limit_dialogues=2)
    assert set(records) == {u.key for u in todo}
    assert {r["captioner"] for r in records.values()} == {"cue-fallback:frames=4"}  # the node's default
    problems = {k: r["status"] for k, r in records.items() if r["status"] != "ok"}
    assert problems == {MISSING: "missing", UNREADABLE: "unreadable", TOO_LONG: "duration_mismatch"}
    assert all(r["caption"] == "" for k, r in records.items() if k in problems)
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert all("face" in r["caption"] and r["frames"] == 4 and "fallback-captioner" in r["flags"] for r in ok)
    report = json.loads(next(out.glob("*.manifest.json")).read_text())
    assert report["counts"] == {"ok": len(todo) - 3, "missing": 1, "unreadable": 1, "duration_mismatch": 1}
    assert {p["key"] for p in report["problems"]} == set(problems)
    assert main(args + ["--check_only", "--out", str(tmp_path / "check")]) == 0  # the check alone, no captioner
    assert json.loads((tmp_path / "check" / "manifest.shard0of1.json").read_text())["counts"] == report["counts"]
    assert main(args + ["--shard", "2/2"]) == 2 and main(["--video_dir", str(tmp_path / "none"), "--captioner",
                                                          "cue-fallback", "--out", str(out)]) == 2
    only_train = tmp_path / "only_train"
    (only_train / SPLIT_DIRS["train"]).mkdir(parents=True)  # e.g. only train_splits unpacked so far
    partial = ["--video_dir", str(only_train), "--captioner", "cue-fallback", "--limit_dialogues", "1"]
    assert main(partial + ["--out", str(tmp_path / "p")]) == 2  # dev and test would be all 'missing'
    assert main(partial + ["--out", str(tmp_path / "p"), "--splits", "train"]) == 0
    for bad in (["--batch_size", "0"], ["--frames", "0"], ["--max_new", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(args + bad)
        assert exit_.value.code == 2


def test_a_killed_run_resumes_without_captioning_again_and_shards_split_the_work(meld_raw, tmp_path):
    out = tmp_path / "captions"
    base = ["--video_dir", str(meld_raw), "--captioner", "cue-fallback", "--frames", "3", "--splits", "dev",
            "--limit_dialogues", "2", "--out", str(out)]
    assert main(base + ["--max_new", "3"]) == 3  # stopped early: not done yet
    (shard,) = out.glob("*.jsonl")
    first_lines = shard.read_text().splitlines()
    assert len(first_lines) == 3
    with open(shard, "a") as fh:
        fh.write('{"key": "dev/dia1_utt0", "capt')  # killed while writing the 4th record
    assert len(read_captions(out)) == 3  # the cut line is not a record
    assert main(base) == 0
    lines = shard.read_text().splitlines()
    dev = [u.key for u in utterances(["dev"], limit_dialogues=2)]
    assert lines[:3] == first_lines and sorted(json.loads(x)["key"] for x in lines) == sorted(dev)
    halves = [tmp_path / "half0", tmp_path / "half1"]
    for i, half in enumerate(halves):
        assert main(base[:-1] + [str(half), "--shard", f"{i}/2"]) == 0
        assert next(half.glob("*.jsonl")).name == f"cue-fallback_frames=3.shard{i}of2.jsonl"
    keys = [set(read_captions(h)) for h in halves]
    assert not keys[0] & keys[1] and keys[0] | keys[1] == set(dev)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1-4", "-1/2"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)


class WordyCaptioner(WindowCaptioner):
    """A captioner that breaks the annotator prompt's rule and names emotions."""

    name = "wordy"

    def describe(self, images):
        return "He smiles happily and looks angry, raising his eyebrows."


def test_no_emotion_word_reaches_the_cache(meld_raw, tmp_path):
    todo = [u for u in utterances(["train"], limit_dialogues=1) if u.key != MISSING][:2]
    caption_run(WordyCaptioner(frames_per_window=2), meld_raw, todo, tmp_path, log=lambda *_: None)
    records = read_captions(tmp_path)
    for r in records.values():
        assert r["caption"] == "He smiles and looks, raising his eyebrows."
        assert filter_emotion_words(r["caption"]).removed == ()
        assert r["removed_words"] == ["happily", "angry"] and r["captioner"] == "wordy:frames=2"


class ShortClipFailingCaptioner(WindowCaptioner):
    """Fails on a clip with fewer frames than it asks for, as a real captioner may fail on one clip of a batch."""

    name = "picky"

    def describe(self, images):
        if len(images) < self.frames_per_window:
            raise RuntimeError("too few frames")
        return "A person turns the head."


def test_a_clip_the_captioner_fails_on_is_recorded_failed_alone_and_retried_on_resume(meld_raw, tmp_path):
    todo = [u for u in utterances(["train"], limit_dialogues=2) if u.key != MISSING]
    frames = {u.key: round(cv2.VideoCapture(str(meld_raw / "train_splits" / f"dia{u.dialogue_id}_utt"
                                                f"{u.utterance_id}.mp4")).get(cv2.CAP_PROP_FRAME_COUNT))
              for u in todo}
    short = {k for k, n in frames.items() if n < 25}
    assert short and len(short) < len(todo)  # both kinds in every batch of 4 below
    report = caption_run(ShortClipFailingCaptioner(frames_per_window=25), meld_raw, todo, tmp_path, batch_size=4,
                         log=lambda *_: None)
    records = read_captions(tmp_path)
    assert {k for k, r in records.items() if r["status"] == "failed"} == short
    assert all(r["detail"] == "RuntimeError: too few frames" for k, r in records.items() if k in short)
    assert report["counts"] == {"ok": len(todo) - len(short), "failed": len(short)}
    lines = len((next(tmp_path.glob("*.jsonl"))).read_text().splitlines())
    caption_run(ShortClipFailingCaptioner(frames_per_window=25), meld_raw, todo, tmp_path, log=lambda *_: None)
    assert len((next(tmp_path.glob("*.jsonl"))).read_text().splitlines()) == lines + len(short)  # only those


def test_the_qwen_captioner_runs_in_the_pipeline_with_an_id_naming_its_weights(meld_raw, tmp_path, tiny_qwen_dir):
    captioner = make_captioner("qwen2.5-vl", tiny_qwen_dir, frames=2, max_new_tokens=4)
    ident = captioner_id(captioner)
    assert ident.startswith(f"qwen2.5-vl:{Path(tiny_qwen_dir).name}@") and "frames=2,max_new_tokens=4," in ident
    assert ",pixels=3136-200704,float32,prompt=" in ident  # QwenVLCaptioner's default pixel range, fp32 weights
    half = make_captioner("qwen2.5-vl", tiny_qwen_dir, frames=2, max_new_tokens=4, dtype="bfloat16")
    assert captioner_id(half) == ident.replace(",float32,", ",bfloat16,")
    todo = [u for u in utterances(["test"], limit_dialogues=2) if u.key != TOO_LONG][:2]
    report = caption_run(captioner, meld_raw, todo, tmp_path, batch_size=2, log=lambda *_: None)
    assert report["counts"] == {"ok": 2}  # one batched generate call for the two clips
    assert all(r["captioner"] == ident and r["frames"] == 2 for r in read_captions(tmp_path).values())
    with pytest.raises(ValueError, match="--qwen_path"):
        make_captioner("qwen2.5-vl")


def test_captions_of_two_captioners_or_a_damaged_line_are_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"key": "dev/dia0_utt0", "captioner": "cue-fallback:frames=8"}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"key": "dev/dia0_utt1", "captioner": "cue-fallback:frames=3"}) + "\n")
    with pytest.raises(ValueError, match="more than one captioner"):
        read_captions(tmp_path)
    (tmp_path / "b.jsonl").write_text("not json\n" + json.dumps({"key": "dev/dia0_utt1"}) + "\n")
    with pytest.raises(ValueError, match="b.jsonl:1: not a caption record"):
        read_captions(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m training.captions"):
        read_captions(tmp_path / "nothing")


def test_captions_that_cover_no_training_example_skip_the_visual_stages_and_ship_a_text_only_checkpoint(
        tmp_path, tiny_roberta_dir):
    from dataclasses import replace

    from ddvlm_core.meld import utterance_key
    from test_training import tiny_cfg
    from training.ablate import ROWS, run_rows
    from training.loop import run

    captions = tmp_path / "dev_only.jsonl"  # e.g. only the dev shard was captioned
    captions.write_text(json.dumps({"key": utterance_key("dev", 0, 0), "captioner": "cue-fallback:frames=4",
                                    "status": "ok", "caption": "The person raises both eyebrows."}) + "\n")
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, epochs=1, caption_source=str(captions), stages="text,visual,fusion")
    logs = []
    results = run(cfg, log=logs.append)
    assert "no train example has a usable caption" in results["stages"]["visual"]["skipped"]
    assert "skipped" in results["stages"]["fusion"] and "best" in results["stages"]["text"]
    assert results["captions"]["train"]["captioned"] == 0 and results["captions"]["dev"]["captioned"] == 1
    assert any("visual and fusion stages skipped" in line for line in logs)
    manifest = json.loads((tmp_path / "run" / "checkpoint" / "manifest.json").read_text())
    assert "visual_head" not in manifest["modules"] and "fusion" not in manifest["modules"]
    assert "captioner" not in manifest  # no visual branch, so no captioner for the node to match
    entries = run_rows(replace(cfg, run_dir=str(tmp_path / "ablate")), [r for r in ROWS if r.name == "visual_cmkd"],
                       [0], log=lambda *_: None)
    assert entries[0]["scores"] == [] and "no train example has a usable caption" in entries[0]["not_run"]


def test_visual_and_fusion_stages_train_on_the_captions_and_the_checkpoint_uses_them(meld_raw, tmp_path,
                                                                                     tiny_roberta_dir):
    from ddvlm_core.inference import EmotionRecognizer
    from test_training import tiny_cfg
    from training.loop import run

    captions = tmp_path / "captions"
    assert main(["--video_dir", str(meld_raw), "--captioner", "cue-fallback", "--frames", "4", "--limit_dialogues",
                 "2", "--out", str(captions)]) == 0
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, limit_dialogues=2, caption_source=str(captions),
                   stages="text,visual,fusion")
    logs = []
    results = run(cfg, log=logs.append)
    for stage in ("visual", "fusion"):
        assert results["stages"][stage]["best"]["test"]["n"] == len(utterances(["test"], limit_dialogues=2))
    report = results["captions"]
    assert report["captioner"] == "cue-fallback:frames=4"
    assert report["train"]["clips"]["missing"] == 1 and report["dev"]["clips"]["unreadable"] == 1
    assert report["test"]["problems"] == [{"key": TOO_LONG, "status": "duration_mismatch"}]
    assert report["test"]["captioned"] == report["test"]["examples"] - 1  # the too-long clip: skipped
    assert any("captions train:" in line and "missing 1" in line for line in logs)
    for stage in ("text", "visual", "fusion"):  # a confusion matrix of each stage's dev-selected model
        assert (tmp_path / "run" / f"confusion_{stage}_test.png").stat().st_size > 1000
    checkpoint = tmp_path / "run" / "checkpoint"
    modules = json.loads((checkpoint / "manifest.json").read_text())["modules"]
    assert {"text_head", "visual_head", "fusion"} <= set(modules)
    recognizer = EmotionRecognizer.from_checkpoint(checkpoint)
    assert recognizer.trained_captioner == "cue-fallback:frames=4"  # the node warns when it captions otherwise
    assert recognizer.captioner_check(make_captioner("cue-fallback", frames=4)) == "matches training"
    assert recognizer.captioner_check(make_captioner("cue-fallback", frames=8)) == (
        "matches training, but 8 frames per window where training used 4")
    assert recognizer.captioner_check(WordyCaptioner()) == "differs from training (cue-fallback:frames=4)"
    dialogue = [("Ross", "I got the job!"), ("Rachel", "No way!")]
    caption = next(r["caption"] for r in read_captions(captions).values() if r["caption"])
    with_caption, text_only = recognizer.predict(dialogue, caption), recognizer.predict(dialogue)
    assert with_caption.probabilities != text_only.probabilities  # the trained fusion uses the caption
    # the Table 4 rows that need captions run on them, and the report names the captioner
    from dataclasses import replace

    from training.ablate import ROWS, run_rows, write_report

    base = replace(cfg, run_dir=str(tmp_path / "ablate"))
    entries = run_rows(base, [r for r in ROWS if r.name in ("full", "no_fusion", "visual_cmkd")], [0],
                       log=lambda *_: None)
    assert all("not_run" not in e and len(e["scores"]) == 1 for e in entries)
    # w/o residual fusion: the same branches fused by concatenation, its fusion stage's score (it used to be a run
    # without a fusion stage, scored on its text branch: the text-only row's number under another name)
    from ddvlm_core.fusion import ConcatFusion

    no_fusion = tmp_path / "ablate" / "ablation" / "no_fusion" / "seed0"
    fused = json.loads((no_fusion / "results.json").read_text())["stages"]["fusion"]["best"]["test"]["wa_f1"]
    assert next(e for e in entries if e["row"] == "no_fusion")["scores"] == [fused]
    concat = EmotionRecognizer.from_checkpoint(no_fusion / "checkpoint")
    assert isinstance(concat.model.fusion, ConcatFusion)
    assert concat.predict(dialogue, caption).probabilities != concat.predict(dialogue).probabilities
    write_report(entries, base, tmp_path / "ablation")
    text = (tmp_path / "ablation.md").read_text()
    assert "| DDVLM (full) | " in text and "not run" not in text
    assert (f"Captions: `cue-fallback:frames=4` from {captions}; examples with a usable caption: train "
            f"{report['train']['captioned']}/{report['train']['examples']}") in text


def test_one_command_per_stage_trains_what_one_call_of_all_stages_does(meld_raw, tmp_path, tiny_roberta_dir):
    """text, then visual, then fusion, each its own call in one run_dir, load the stages before from there: the
    checkpoint is the one a single call of all three writes. A stage whose stages before it have not run is
    refused before any work (a visual stage alone used to distil from an untrained text head and ship it)."""
    from safetensors.torch import load_file

    from test_training import tiny_cfg
    from training.config import ConfigError
    from training.loop import run

    captions = tmp_path / "captions"
    assert main(["--video_dir", str(meld_raw), "--captioner", "cue-fallback", "--limit_dialogues", "2",
                 "--out", str(captions)]) == 0

    def cfg(run_dir, stages):
        return tiny_cfg(tmp_path, tiny_roberta_dir, limit_dialogues=2, caption_source=str(captions), stages=stages,
                        run_dir=str(tmp_path / run_dir))

    run(cfg("all", "text,visual,fusion"), log=lambda *_: None)
    for stages, missing in (("visual", "text"), ("fusion", "text")):
        with pytest.raises(ConfigError, match=f"build on the {missing} stage, which has not run"):
            run(cfg("staged", stages), log=lambda *_: None)
    run(cfg("staged", "text"), log=lambda *_: None)
    with pytest.raises(ConfigError, match="build on the visual stage, which has not run.*--stages=visual there"):
        run(cfg("staged", "fusion"), log=lambda *_: None)
    logs = []
    run(cfg("staged", "visual"), log=logs.append)
    assert "[text] resumed after epoch 2" in logs and not any(line.startswith("[text] epoch") for line in logs)
    results = run(cfg("staged", "fusion"), log=lambda *_: None)
    assert results["stages"]["visual"]["epoch"] == 2 and results["stages"]["fusion"]["best"]["test"]["n"] > 0
    one_call, staged = tmp_path / "all" / "checkpoint", tmp_path / "staged" / "checkpoint"
    modules = json.loads((one_call / "manifest.json").read_text())["modules"]
    assert json.loads((staged / "manifest.json").read_text())["modules"] == modules
    for module in ("text_head", "visual_head", "fusion"):
        a, b = load_file(one_call / f"{module}.safetensors"), load_file(staged / f"{module}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), module
    # an export of the run directory's best weights holds the visual head and the fusion too, and their captioner
    from training.export import export

    exported = json.loads((export(tmp_path / "staged", tmp_path / "exported") / "manifest.json").read_text())
    assert exported["modules"] == modules and exported["captioner"] == "cue-fallback:frames=4"
    # the staged run and the one-call run fitted the same temperatures; the export carries them too
    temperatures = [{k: json.loads((c / "manifest.json").read_text())["config"][k]
                     for k in ("text_temperature", "fused_temperature")} for c in (one_call, staged)]
    assert temperatures[0] == temperatures[1] == {k: exported["config"][k] for k in temperatures[0]}
    assert 1.0 not in temperatures[0].values() and exported["calibration"]["fitted_on"] == "MELD dev"


def test_the_evaluator_scores_a_fused_checkpoint_with_the_captions_as_the_node_would(meld_raw, tmp_path,
                                                                                     tiny_roberta_dir):
    """``python -m training.evaluate CKPT --captions DIR``: each captioned MELD utterance is scored with its caption
    (the recognizer's fused answer), the others from their text; without --captions the output says text only."""
    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.labels import LABELS
    from ddvlm_core.meld import dialogues
    from test_training import tiny_cfg
    from training.evaluate import evaluate_checkpoint
    from training.loop import run

    captions = tmp_path / "captions"
    assert main(["--video_dir", str(meld_raw), "--captioner", "cue-fallback", "--limit_dialogues", "2", "--splits",
                 "train,dev", "--out", str(captions)]) == 0
    trained = run(tiny_cfg(tmp_path, tiny_roberta_dir, limit_dialogues=2, caption_source=str(captions)),
                  log=lambda *_: None)
    checkpoint = tmp_path / "run" / "checkpoint"
    # the run fitted both temperatures on its dev split: the fused one on the captioned rows only
    config = json.loads((checkpoint / "manifest.json").read_text())["config"]
    fusion_fit = trained["stages"]["fusion"]["calibration"]
    assert config["fused_temperature"] == fusion_fit["temperature"] != config["text_temperature"]
    assert config["text_temperature"] == trained["stages"]["text"]["calibration"]["temperature"]
    assert fusion_fit["dev"]["n"] < trained["stages"]["fusion"]["best"]["dev"]["n"]
    logs = []
    text_only = evaluate_checkpoint(checkpoint, ("dev",), log=logs.append)
    fused = evaluate_checkpoint(checkpoint, ("dev",), log=logs.append, captions=captions)
    assert text_only["modalities"] == "text" and "text only: this fused checkpoint" in logs[0]
    records = read_captions(captions)
    rows = [u for d in sorted(dialogues("dev")) for u in dialogues("dev")[d]]  # the evaluator's example order
    with_caption = [i for i, u in enumerate(rows) if records.get(u.key, {}).get("caption")]
    assert fused["modalities"] == "text + captions" and fused["splits"]["dev"]["captioned"] == len(with_caption) > 5
    assert any(f"1109 utterances, {len(with_caption)} with a caption" in line for line in logs)
    a, b = text_only["splits"]["dev"]["predictions"], fused["splits"]["dev"]["predictions"]
    assert all(a[i] == b[i] for i in range(len(rows)) if i not in with_caption)  # no caption: the text's answer
    recognizer = EmotionRecognizer.from_checkpoint(checkpoint)
    for i in with_caption:
        u, turns = rows[i], dialogues("dev")[rows[i].dialogue_id]
        context = [(r.speaker, r.text) for r in turns[:turns.index(u) + 1]]
        answer = recognizer.predict(context, records[u.key]["caption"])
        assert answer.modalities != "text" and LABELS[b[i]] == answer.top_label, u.key
    # calibrating with the captions fits the fused temperature on the captioned dev answers (no test clip here),
    # the text one on all; the recognizer's fused answers then use the fused one
    from training.calibrate import calibrate

    report = calibrate(checkpoint, captions, log=logs.append)
    fused_fit, text_fit = report["branches"]["fused"], report["branches"]["text"]
    assert fused_fit["splits"]["dev"]["n"] == len(with_caption) and fused_fit["splits"]["test"]["n"] == 0
    assert text_fit["splits"]["dev"]["n"] == 1109 and fused_fit["temperature"] != text_fit["temperature"]
    config = json.loads((checkpoint / "manifest.json").read_text())["config"]
    fitted = (fused_fit["temperature"], text_fit["temperature"])
    assert (config["fused_temperature"], config["text_temperature"]) == fitted
    u, turns = rows[with_caption[0]], dialogues("dev")[rows[with_caption[0]].dialogue_id]
    context = [(r.speaker, r.text) for r in turns[:turns.index(u) + 1]]
    before = recognizer.predict(context, records[u.key]["caption"]).probabilities
    after = EmotionRecognizer.from_checkpoint(checkpoint).predict(context, records[u.key]["caption"]).probabilities
    ratio = fusion_fit["temperature"] / fused_fit["temperature"]  # "before": the run's own temperature
    expected = torch.softmax(torch.tensor(before, dtype=torch.float64).log() * ratio, -1)
    assert torch.allclose(torch.tensor(after, dtype=torch.float64), expected, atol=1e-5)


def test_the_captioning_command_runs_as_documented(meld_raw, tmp_path):
    cmd = [sys.executable, "-m", "training.captions", "--video_dir", str(meld_raw), "--captioner", "cue-fallback",
           "--splits", "test", "--limit_dialogues", "1", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "problem clips listed in cue-fallback_frames=4.shard0of1.manifest.json" in done.stdout
