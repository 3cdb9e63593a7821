"""The training loop on tiny real models: end to end, SD schedule, resume, data and evaluator guards."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddvlm_core.inference import EmotionRecognizer
from ddvlm_core.meld import dialogues
from training.config import load_config
from training.data import Example, batches, check_full_test_split
from ddvlm_core.metrics import metrics
from training.loop import run
from training.schedule import lr_left_after


def tiny_cfg(tmp_path, tiny_roberta_dir, **over):
    base = {"text_backbone": tiny_roberta_dir, "limit_dialogues": 4, "epochs": 2, "batch_size": 4,
            "run_dir": str(tmp_path / "run"), "feature_cache": str(tmp_path / "features"), "eval_batch_size": 8,
            "text_mode": "frozen", "head_lr": 1e-2}
    base.update(over)
    return load_config(None, [f"--{k}={v}" for k, v in base.items()])


def test_lora_run_end_to_end_writes_a_checkpoint_that_loads_and_predicts(tmp_path, tiny_roberta_dir, capsys):
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, text_mode="lora", lr=1e-3)
    results = run(cfg, log=lambda *_: None)
    bars = capsys.readouterr().err  # training and each per-epoch evaluation show a progress bar with an ETA
    assert "text epoch 1/" in bars and "text eval dev:" in bars and "text eval test:" in bars
    best = results["stages"]["text"]["best"]
    assert best["dev"]["n"] == sum(len(dialogues("dev")[d]) for d in sorted(dialogues("dev"))[:4])
    assert "skipped" in results["stages"]["visual"]
    ckpt = tmp_path / "run" / "checkpoint"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert set(manifest["modules"]) == {"text_head", "backbone_lora"}  # text-only: no placeholder fusion
    rec = EmotionRecognizer.from_checkpoint(ckpt, load_caption_embedder=False)
    p = rec.predict([("Ross", "I got the job!"), ("Rachel", "No way!")])
    assert sum(p.probabilities) == pytest.approx(1, abs=1e-5)
    assert (tmp_path / "run" / "confusion_text_test.png").stat().st_size > 1000
    # the merged adapter changed the backbone: predictions differ from the untrained backbone's
    adapter = load_file(ckpt / "backbone_lora.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    # the checkpoint's temperature is the one that fits dev best for the checkpoint as it loads: refit here on
    # its own dev logits, computed apart from the run (the recognizer's model, the evaluator's examples)
    from ddvlm_core.calibration import fit_temperature
    from ddvlm_core.context import PromptBuilder
    from training.data import build_examples
    from training.evaluate import logits_of_examples

    calibration = results["stages"]["text"]["calibration"]
    examples = build_examples("dev", PromptBuilder(rec.tokenizer), limit_dialogues=4)
    dev_logits = logits_of_examples(lambda ids, mask: rec.model.text(ids, mask).logits, examples,
                                    rec.tokenizer.pad_token_id)
    refit = fit_temperature(dev_logits, torch.tensor([e.label for e in examples]))
    assert manifest["config"]["text_temperature"] == calibration["temperature"] == pytest.approx(refit, rel=1e-4)
    assert manifest["calibration"]["text_temperature"] == calibration["temperature"] != 1.0
    assert calibration["dev"]["calibrated"]["nll"] <= calibration["dev"]["as_trained"]["nll"]
    assert "fused_temperature" not in manifest["calibration"] and manifest["config"]["fused_temperature"] == 1.0


def test_lora_can_train_the_speaker_token_rows_and_the_checkpoint_keeps_them(tmp_path, tiny_roberta_dir):
    """LoRA leaves the embeddings frozen, where <s1>..<s9> stay near-duplicates (the mean of their pieces):
    lora_speaker_tokens trains their rows too, and the checkpoint stores and merges them."""
    from ddvlm_core.context import speaker_token_names
    from ddvlm_core.text import load_backbone, load_tokenizer

    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, text_mode="lora", lr=1e-2, lora_speaker_tokens="true")
    run(cfg, log=lambda *_: None)
    ckpt = tmp_path / "run" / "checkpoint"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    tokenizer = load_tokenizer(tiny_roberta_dir)
    ids = tokenizer.convert_tokens_to_ids(speaker_token_names())
    assert manifest["config"]["lora"]["trainable_tokens"] == ids
    rows = [v for k, v in load_file(ckpt / "backbone_lora.safetensors").items() if "trainable_tokens" in k]
    assert len(rows) == 1 and rows[0].shape == (len(ids), 32)
    initial = load_backbone(tiny_roberta_dir, tokenizer).get_input_embeddings().weight[ids]
    merged = EmotionRecognizer.from_checkpoint(ckpt, load_caption_embedder=False).model.text.backbone
    trained = merged.get_input_embeddings().weight[ids]
    assert torch.equal(trained, rows[0]) and not torch.allclose(trained, initial)
    cached = {"text_mode": "lora", "lora_layers": "1", "cache_frozen_layers": "true"}
    for over, message in (({"text_mode": "frozen"}, "only applies to text_mode: lora"), (cached, "one or the other")):
        with pytest.raises(ValueError, match=message):
            tiny_cfg(tmp_path, tiny_roberta_dir, lora_speaker_tokens="true", **over)


def test_lora_goes_on_from_a_checkpoint_training_only_the_layers_named(tmp_path, tiny_roberta_dir):
    """init_checkpoint: training starts from the checkpoint's adapter and head (the model then answers as the
    checkpoint does), the adapter's layers outside lora_layers stay as they were, the frozen layers' cache is keyed
    by the adapter, and the new checkpoint holds the whole adapter; what cannot go on is refused before any work."""
    import shutil

    from ddvlm_core.model import DDVLM
    from training.config import ConfigError
    from training.init_from import start_from_checkpoint

    run(tiny_cfg(tmp_path / "a", tiny_roberta_dir, text_mode="lora", lr=1e-2, epochs=1), log=lambda *_: None)
    start = tmp_path / "a" / "run" / "checkpoint"
    go_on = {"text_mode": "lora", "lr": 1e-2, "epochs": 1, "init_checkpoint": str(start), "lora_layers": "1",
             "cache_frozen_layers": "true", "punctuation_dropout": 0.5, "self_distillation": "false"}
    cfg = tiny_cfg(tmp_path / "b", tiny_roberta_dir, **go_on)
    model, tok = DDVLM.from_backbone(cfg.model_config())
    digest = start_from_checkpoint(cfg, model, log=lambda *_: None)
    loaded = EmotionRecognizer.from_checkpoint(start, load_caption_embedder=False)
    ids = tok("Now <s1> feels <mask>", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model.eval().text(ids.input_ids, ids.attention_mask).logits,
                              loaded.model.text(ids.input_ids, ids.attention_mask).logits, atol=1e-5)
    trains = {n for n, p in model.text.backbone.named_parameters() if p.requires_grad}
    assert trains and all(".layer.1." in n for n in trains)

    logs = []
    results = run(cfg, log=logs.append)
    assert any("init: " in line and "training the adapter in layers 1" in line for line in logs)
    start_scores = results["stages"]["text"]["start"]  # the start checkpoint scored first: the score to beat
    first = json.loads((tmp_path / "a" / "run" / "results.json").read_text())["stages"]["text"]["best"]
    assert (start_scores["dev_wa_f1"], start_scores["test_wa_f1"]) == pytest.approx(
        (first["dev_wa_f1"], first["test_wa_f1"]))  # what the first run's kept epoch scored
    beaten = results["stages"]["text"]["best"]["dev_wa_f1"] > start_scores["dev_wa_f1"]
    assert any(line.startswith("[text] no epoch beat the start on dev") for line in logs) is not beaten
    assert results["stages"]["text"].get("start_was_better", False) is not beaten
    still = []  # a learning rate that moves nothing: the one epoch scores what the start did, and the run says so
    unmoved = run(tiny_cfg(tmp_path / "still", tiny_roberta_dir, **(go_on | {"lr": 1e-12})), log=still.append)
    assert unmoved["stages"]["text"]["start_was_better"] is True
    assert [line for line in still if line.startswith("[text] no epoch beat the start on dev")] == [
        f"[text] no epoch beat the start on dev (dev WA-F1 {start_scores['dev_wa_f1']:.2f} at the start, "
        f"{start_scores['dev_wa_f1']:.2f} at epoch 1): {start} as it was is the better model on this dev"]
    before = load_file(start / "backbone_lora.safetensors")
    after = load_file(tmp_path / "b" / "run" / "checkpoint" / "backbone_lora.safetensors")
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before if ".layer.0." in k)
    assert any(not torch.equal(after[k], before[k]) for k in before if ".layer.1." in k and "lora_B" in k)
    head_before = load_file(start / "text_head.safetensors")
    head_after = load_file(tmp_path / "b" / "run" / "checkpoint" / "text_head.safetensors")
    assert not all(torch.equal(head_after[k], head_before[k]) for k in head_before)
    manifest = json.loads((tmp_path / "b" / "run" / "checkpoint" / "manifest.json").read_text())
    assert manifest["config"]["lora"] == json.loads((start / "manifest.json").read_text())["config"]["lora"]
    cached = sorted(p.name for p in (tmp_path / "b" / "features").glob("*-layer1-*.safetensors"))
    assert len(cached) == 4 and all(f"-{digest[:16]}-" in name for name in cached)  # train, its unpunctuated, dev, test
    rec = EmotionRecognizer.from_checkpoint(tmp_path / "b" / "run" / "checkpoint", load_caption_embedder=False)
    assert sum(rec.predict([("Ross", "I got the job!")]).probabilities) == pytest.approx(1, abs=1e-5)
    from training.export import export  # a run's best weights, exported: on the same start, the same adapter

    exported = export(tmp_path / "b" / "run", tmp_path / "exported")
    assert all(torch.equal(v, after[k]) for k, v in load_file(exported / "backbone_lora.safetensors").items())
    record = tmp_path / "b" / "run" / "init_checkpoint.json"
    assert json.loads(record.read_text())["backbone_lora_sha256"] == digest
    record.write_text(json.dumps({"init_checkpoint": str(start), "backbone_lora_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="not the one this run started from"):  # the start was replaced since
        export(tmp_path / "b" / "run", tmp_path / "exported_again")

    no_adapter = tmp_path / "no_adapter"
    shutil.copytree(start, no_adapter)
    manifest = json.loads((no_adapter / "manifest.json").read_text())
    del manifest["modules"]["backbone_lora"]
    (no_adapter / "manifest.json").write_text(json.dumps(manifest))
    refused = [({"init_checkpoint": str(no_adapter)}, "no backbone_lora in it"),
               ({"speaker_tokens": "false"}, "its speaker_tokens is True, this run's False"),
               ({"init_checkpoint": str(tmp_path / "nowhere")}, "init_checkpoint: ")]
    for over, message in refused:
        with pytest.raises(ConfigError, match=message):
            run(tiny_cfg(tmp_path / "c", tiny_roberta_dir, **(go_on | over)), log=lambda *_: None)
    assert not (tmp_path / "c" / "features").exists()  # refused before any work
    for over, message in (({"text_mode": "full"}, "only applies to text_mode: lora"),
                          ({"lora_speaker_tokens": "true", "cache_frozen_layers": "false"}, "cannot add token rows")):
        with pytest.raises(ValueError, match=message):
            tiny_cfg(tmp_path, tiny_roberta_dir, **(go_on | over))


def test_resume_after_interrupt_gives_the_same_weights(tmp_path, tiny_roberta_dir):
    straight = tiny_cfg(tmp_path / "a", tiny_roberta_dir, epochs=3)
    run(straight, log=lambda *_: None)
    # state_every=0: no state is written between epochs, only when the time budget stops the run
    interrupted = tiny_cfg(tmp_path / "b", tiny_roberta_dir, epochs=3, time_budget_min=1e-9, state_every=0)
    stop_logs = []
    first = run(interrupted, log=stop_logs.append)
    assert first["stages"]["text"]["stopped_early"] == 1
    steps = first["stages"]["text"]["history"][0]["train_steps"]  # where the 3-epoch schedule was left
    left = lr_left_after(1, 3, interrupted.warmup_ratio, steps)
    assert 0 < left < 1 and any(f"stopping after epoch 1 of 3, the learning rate still at {left:.0%} of its peak"
                                in line for line in stop_logs)
    assert (tmp_path / "b" / "run" / "text" / "best.safetensors").is_file()
    with pytest.raises(ValueError, match="other lr, text_mode"):  # another run's state is never resumed
        run(tiny_cfg(tmp_path / "b", tiny_roberta_dir, epochs=3, text_mode="lora", lr=1e-3), log=lambda *_: None)
    logs = []
    resumed = run(tiny_cfg(tmp_path / "b", tiny_roberta_dir, epochs=3, state_every=2), log=logs.append)  # hosting key
    assert any("resumed after epoch 1" in line for line in logs)
    assert resumed["stages"]["text"]["resumed_after"] == 1 and "resumed_after" not in first["stages"]["text"]
    a = load_file(tmp_path / "a" / "run" / "text" / "last" / "state.safetensors")
    b = load_file(tmp_path / "b" / "run" / "text" / "last" / "state.safetensors")
    for key in a:
        if key.startswith(("student.", "teacher.")):
            assert torch.equal(a[key], b[key]), key


def test_a_saved_state_that_cannot_be_read_is_refused_with_what_to_do(tmp_path, tiny_roberta_dir):
    from training.config import ConfigError

    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, epochs=2, time_budget_min=1e-9)
    run(cfg, log=lambda *_: None)  # stopped by its budget after epoch 1: a state to resume from
    last = tmp_path / "run" / "text" / "last"
    whole = (last / "state.safetensors").read_bytes()
    (last / "state.safetensors").write_bytes(whole[:300])  # e.g. a copy cut short on its way back from a GPU
    resume = tiny_cfg(tmp_path, tiny_roberta_dir, epochs=2)
    with pytest.raises(ConfigError, match=r"text/last: the saved state to resume from cannot be read \(Safetensor"):
        run(resume, log=lambda *_: None)
    (last / "state.safetensors").write_bytes(whole)
    (last / "state.json").write_text('{"info": {}}')
    with pytest.raises(ConfigError, match="parts are missing.*delete that folder to run the text stage"):
        run(resume, log=lambda *_: None)
    for f in last.iterdir():
        f.unlink()
    last.rmdir()
    assert run(resume, log=lambda *_: None)["stages"]["text"]["best"]  # as the message says: it runs from the start


def test_a_resumed_runs_seconds_add_the_time_its_history_records_for_the_epochs_an_earlier_call_ran():
    from training.ablate import ROWS, _summary, resumed_text

    row = next(r for r in ROWS if r.name == "text_sd")
    history = [{"epoch": k, "train_seconds": t, "eval_seconds": e} for k, (t, e) in enumerate([(10, 2), (20, 3),
                                                                                               (40, 5)], 1)]
    text = {"history": history, "best": {"epoch": 3, "dev_wa_f1": 50.0, "test": {"wa_f1": 55.0}}}
    whole = _summary({"stages": {"text": text}}, row, 0, 80.0)
    assert whole["seconds"] == 80.0 and resumed_text(whole) == ""
    again = _summary({"stages": {"text": {**text, "resumed_after": 2}}}, row, 0, 50.0)  # epoch 3 in this call
    assert again["seconds"] == 50.0 + 12 + 23 and again["epochs_run"] == 3
    assert resumed_text(again) == " (resumed after epoch 2)"
    reread = _summary({"stages": {"text": {**text, "resumed_after": 3}}}, row, 0, 4.0)  # found finished
    assert reread["seconds"] == 4.0 + 12 + 23 + 45 and resumed_text(reread) == " (re-read)"


def test_the_resume_state_is_saved_every_n_epochs_and_whenever_the_run_stops():
    from training.loop import saves_state_after

    assert [e for e in range(1, 11) if saves_state_after(e, 10, 1, False)] == list(range(1, 11))
    assert [e for e in range(1, 11) if saves_state_after(e, 10, 3, False)] == [3, 6, 9, 10]
    assert [e for e in range(1, 11) if saves_state_after(e, 10, 0, False)] == [10]
    assert saves_state_after(4, 10, 0, True)  # stopped by the time budget: resumable from epoch 4
    with pytest.raises(ValueError, match="state_every"):
        load_config(None, ["--state_every=-1"])


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_kill_while_the_state_is_saved_resumes_to_the_weights_of_an_uninterrupted_run(
        tmp_path, tiny_roberta_dir, monkeypatch, kill_at):
    """The save after epoch 2 is killed at its k-th rename: 1 before epoch 1's state is moved aside, 2 when there is
    no text/last at all (epoch 2's state is whole in last.tmp), 3 before the best weights are published. The run
    resumes from a saved state (never from scratch) and ends with the uninterrupted run's best weights and
    history."""
    import os

    straight = run(tiny_cfg(tmp_path / "a", tiny_roberta_dir, epochs=3, seed=3), log=lambda *_: None)
    cfg = tiny_cfg(tmp_path / "b", tiny_roberta_dir, epochs=3, seed=3)
    run(tiny_cfg(tmp_path / "b", tiny_roberta_dir, epochs=3, seed=3, time_budget_min=1e-9), log=lambda *_: None)
    renames, real_replace = [], os.replace

    def replace(src, dst):
        if "/run/text/" in str(dst):
            renames.append(dst)
            if len(renames) == kill_at:
                raise KeyboardInterrupt  # the process is killed here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, log=lambda *_: None)
    monkeypatch.undo()
    text = tmp_path / "b" / "run" / "text"
    assert (kill_at == 2) != (text / "last" / "state.json").is_file()  # the moment without text/last
    from training.export import main as export_main

    with pytest.raises(ValueError, match="holds the state of a run with other head_lr"):  # even with no text/last
        run(tiny_cfg(tmp_path / "b", tiny_roberta_dir, epochs=3, seed=3, head_lr=5e-3), log=lambda *_: None)
    assert export_main([str(tmp_path / "b" / "run"), str(tmp_path / "exported")]) == 0  # before any resume
    logs = []
    resumed = run(cfg, log=logs.append)["stages"]["text"]
    saved = 1 if kill_at == 1 else 2  # killed before the swap began: epoch 1's state; after: epoch 2's, whole
    assert any(f"resumed after epoch {saved}" in line for line in logs), logs
    assert [r["dev_wa_f1"] for r in resumed["history"]] == \
        [r["dev_wa_f1"] for r in straight["stages"]["text"]["history"]]
    assert resumed["best"]["epoch"] == straight["stages"]["text"]["best"]["epoch"]
    a, b = load_file(tmp_path / "a" / "run" / "text" / "best.safetensors"), load_file(text / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    left = sorted(p.name for p in text.iterdir() if p.name.startswith(("last", "best")))
    assert left == ["best.safetensors", "last"]  # no last.tmp, last.old or best.safetensors.tmp


def test_sd_select_ema_keeps_the_ema_teachers_weights_and_scores(tmp_path, tiny_roberta_dir):
    """sd_select: ema hands on the EMA teacher's weights of the dev-selected epoch (here epoch 1 of 1, so the
    teacher in the saved resume state is that teacher) with the teacher's dev / test scores."""
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, epochs=1, sd_select="ema")
    results = run(cfg, log=lambda *_: None)
    text = results["stages"]["text"]
    best, record = text["best"], text["history"][0]
    assert best["kept"] == "ema"
    assert (best["dev_wa_f1"], best["test_wa_f1"]) == (record["teacher_dev_wa_f1"], record["teacher_test_wa_f1"])
    assert best["dev"]["wa_f1"] == record["teacher_dev_wa_f1"]
    kept = load_file(tmp_path / "run" / "text" / "best.safetensors")
    state = load_file(tmp_path / "run" / "text" / "last" / "state.safetensors")
    assert kept and all(torch.equal(v, state[f"teacher.{k}"]) for k, v in kept.items())
    assert not all(torch.equal(v, state[f"student.{k}"]) for k, v in kept.items())  # 1 epoch of steps apart
    from training.model_card import card

    assert "selected epoch (best dev WA-F1): 1, the EMA teacher's weights" in card(
        tmp_path / "run", tmp_path / "run" / "checkpoint", "a test CPU", "pytest")
    student = run(tiny_cfg(tmp_path / "s", tiny_roberta_dir, epochs=1), log=lambda *_: None)["stages"]["text"]
    assert student["best"]["kept"] == "student" and student["best"]["dev_wa_f1"] == record["dev_wa_f1"]


def test_deterministic_runs_use_deterministic_kernels_and_restore_the_settings(tmp_path, tiny_roberta_dir, monkeypatch):
    """deterministic: true turns on torch's deterministic kernels and a fixed cuBLAS workspace for the run (the
    loop's own log lines see them on) and restores the caller's settings; it is a hosting key, so on a CPU,
    where every kernel is deterministic already, it gives the same run."""
    import os

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []

    def log(_line):
        seen.append((torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))

    on = run(tiny_cfg(tmp_path / "on", tiny_roberta_dir, deterministic=True), log=log)
    assert seen and set(seen) == {(True, ":4096:8")}
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    seen.clear()
    off = run(tiny_cfg(tmp_path / "off", tiny_roberta_dir), log=log)
    assert set(seen) == {(False, None)}
    assert [h["dev_wa_f1"] for h in on["stages"]["text"]["history"]] == \
        [h["dev_wa_f1"] for h in off["stages"]["text"]["history"]]
    from training.config import config_differences

    assert config_differences(on["config"], off["config"]) == []  # resumable and mergeable with each other


def test_sd_select_chooses_among_the_student_and_the_ema_teacher_on_dev_only():
    from training.config import config_differences
    from training.config import candidates

    student, ema = {"dev": {"wa_f1": 50.0}}, {"dev": {"wa_f1": 52.0}}
    assert candidates("student", student, ema) == [("student", student)]
    assert candidates("ema", student, ema) == [("ema", ema)]
    assert candidates("either", student, ema) == [("student", student), ("ema", ema)]  # a tie keeps the student
    assert candidates("ema", student, {}) == [("student", student)]  # no teacher (no SD, visual, fusion stages)
    with pytest.raises(ValueError, match="sd_select"):
        load_config(None, ["--sd_select=teacher"])
    # a report or run directory written before sd_select existed used the default: not a difference
    old = {k: v for k, v in load_config(None, []).to_dict().items() if k != "sd_select"}
    assert config_differences(old, load_config(None, []).to_dict()) == []
    assert config_differences(old, load_config(None, ["--sd_select=ema"]).to_dict()) == ["sd_select"]


def test_time_budget_stops_before_an_epoch_that_would_overrun_it():
    from training.loop import over_budget

    # 10 min budget, epochs of 3 min: after 6 min a third epoch would end at 9 min (go on); after 8 min, at 11
    assert not over_budget(6 * 60, 3 * 60, 10)
    assert over_budget(8 * 60, 3 * 60, 10)
    assert not over_budget(10_000, 10_000, 0)  # 0: no budget


def test_epoch_one_is_cross_entropy_only_then_self_distillation(tmp_path, tiny_roberta_dir):
    from ddvlm_core import losses as L
    from ddvlm_core.model import DDVLM, DDVLMConfig
    from training.loop import build_data, text_stage

    cfg = tiny_cfg(tmp_path, tiny_roberta_dir)
    model, tok = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir))
    data = build_data(cfg, tok)
    stage = text_stage(cfg, model, tok, data, log=lambda *_: None)
    teacher = L.EMATeacher(stage.student)
    with torch.no_grad():
        teacher.model[1].weight.add_(1.0)  # a teacher that disagrees with the student
    idx, y = [0, 1, 2, 3], torch.tensor([e.label for e in data["train"][:4]])
    stage.student.eval()
    ce = L.classification_loss(stage.logits(stage.student, "train", idx), y)
    assert torch.equal(stage.loss(stage.student, teacher, idx, y, 1), ce)
    sd = stage.loss(stage.student, teacher, idx, y, 2)
    z_t = stage.logits(teacher.model, "train", idx)
    expected = 0.7 * ce + 0.3 * L.distillation_kl(z_t, stage.logits(stage.student, "train", idx), 2.0)
    torch.testing.assert_close(sd, expected)


@pytest.mark.parametrize("mode", ["full", "frozen", "lora_cached"])
def test_punctuation_dropout_gives_student_and_teacher_the_drawn_prompts_unpunctuated(tmp_path, tiny_roberta_dir, mode):
    """punctuation_dropout: each epoch a seeded draw of the training prompts is built from the dialogue written as
    an ASR without punctuation writes it; the student and its EMA teacher see the same prompts; dev and test stay.
    With LoRA on the top layers and the frozen ones cached (lora_cached), both writings' states are cached."""
    from ddvlm_core import losses as L
    from ddvlm_core.asr_noise import unpunctuate
    from ddvlm_core.model import DDVLM, DDVLMConfig
    from training.data import UNPUNCTUATED, punctuation_drops
    from training.loop import build_data, text_stage

    cached = {"text_mode": "lora", "lora_layers": "1", "cache_frozen_layers": "true"} if mode == "lora_cached" else {
        "text_mode": mode}
    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, punctuation_dropout=0.5, lr=1e-3, **cached)
    model, tok = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir))
    data = build_data(cfg, tok)
    plain = data[UNPUNCTUATED]
    assert [(e.key, e.label) for e in plain] == [(e.key, e.label) for e in data["train"]]
    first = dialogues("train")[0]
    assert tok.decode(plain[1].input_ids) == tok.decode(tok(f"<s1>: {unpunctuate(first[0].text)} <s2>: "
                                                            f"{unpunctuate(first[1].text)} Now <s2> feels "
                                                            f"{tok.mask_token}").input_ids)
    stage = text_stage(cfg, model, tok, data, log=lambda *_: None)
    drops = punctuation_drops(cfg.seed, 2, len(data["train"]), 0.5)
    assert torch.equal(drops, punctuation_drops(cfg.seed, 2, len(data["train"]), 0.5))  # the same on every rank
    assert not torch.equal(drops, punctuation_drops(cfg.seed, 3, len(data["train"]), 0.5))  # anew each epoch
    assert 0.3 < drops.float().mean() < 0.7
    idx = [i for i in range(len(drops)) if drops[i]][:3] + [i for i in range(len(drops)) if not drops[i]][:3]
    y = torch.tensor([data["train"][i].label for i in idx])
    teacher = L.EMATeacher(stage.student)
    with torch.no_grad():
        next(teacher.model.parameters()).add_(0.5)  # a teacher that disagrees with the student
    stage.student.eval()

    def expected_logits(m):
        rows = [(plain if drops[i] else data["train"])[i] for i in idx]
        if mode == "frozen":
            from training.features import extract

            return m(extract(model.text, rows, tok.pad_token_id, 8, "cpu"))
        from training.data import collate

        ids, mask, _ = collate(rows, tok.pad_token_id)
        return m(ids, mask).logits

    with torch.no_grad():
        z_s, z_t = expected_logits(stage.student), expected_logits(teacher.model)
        sd = stage.loss(stage.student, teacher, idx, y, 2)
    torch.testing.assert_close(sd, 0.7 * L.classification_loss(z_s, y) + 0.3 * L.distillation_kl(z_t, z_s, 2.0))
    assert not torch.allclose(z_s, stage.logits(stage.student, "train", idx))  # without the drops: other prompts
    with pytest.raises(ValueError, match=re.escape("punctuation_dropout must be in [0, 1]")):
        tiny_cfg(tmp_path, tiny_roberta_dir, punctuation_dropout="1.5")


def test_split_overlap_is_known_and_the_evaluator_wants_the_whole_test_split():
    from training.data import shared_clips

    # MELD numbers dialogues per split; what must not repeat is the clip itself. One utterance of
    # train dialogue 12 reappears verbatim, same time stamps, in test dialogue 85 (a MELD quirk, reported).
    assert shared_clips("train", "test") == [("train/dia12_utt7", "test/dia85_utt0")]
    assert shared_clips("train", "dev") == [] and shared_clips("dev", "test") == []
    subset = [Example("test", 0, i, (1,), 0) for i in range(100)]
    with pytest.raises(ValueError, match="exactly 2610"):
        check_full_test_split(subset)


def test_metrics_known_answer():
    m = metrics([0, 0, 1, 1, 4], [0, 1, 1, 1, 0])
    # class 0: P 1/2 R 1/2 F1 1/2 (support 2); class 1: P 2/3 R 1 F1 0.8 (2); class 4: F1 0 (1)
    assert m["wa_f1"] == pytest.approx(100 * (2 * 0.5 + 2 * 0.8 + 0) / 5)
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["confusion"][0][:2] == [1, 1] and m["confusion"][4][0] == 1


def test_length_buckets_cover_every_example_once_and_are_seeded():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    plan = batches(lengths, 3, shuffle=True, seed=1)
    assert sorted(i for b in plan for i in b) == list(range(7))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 4 for b in plan)
    assert plan == batches(lengths, 3, shuffle=True, seed=1)


def test_megabatch_buckets_make_new_batches_each_epoch_of_still_similar_lengths():
    """bucket_megabatch: 0 keeps the same length-sorted batches every epoch; N makes new ones inside seeded random
    groups of N batches' prompts, each group sorted by length (MELD train prompt lengths, batch 16, N = 50)."""
    from ddvlm_core.meld import read_split

    lengths = [len(r.text.split()) * 1.3 + 10 * r.utterance_id for r in read_split("train")]  # prompt-like lengths
    fixed = [batches(lengths, 16, shuffle=True, seed=s) for s in (1, 2)]
    assert fixed[0] != fixed[1] and sorted(map(sorted, fixed[0])) == sorted(map(sorted, fixed[1]))  # same batches
    fresh = [batches(lengths, 16, shuffle=True, seed=s, megabatch=50) for s in (1, 2)]
    assert fresh[0] == batches(lengths, 16, shuffle=True, seed=1, megabatch=50)  # seeded
    for plan in fresh:
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))  # every prompt once
        assert sum(len(b) < 16 for b in plan) <= -(-len(lengths) // 800)  # a short batch only ends a group
    kept = {tuple(sorted(b)) for b in fresh[0]}
    assert sum(tuple(sorted(b)) in kept for b in fresh[1]) < len(fresh[1]) // 20  # new batches each epoch

    def padding(plan):  # share of padded positions when each batch is padded to its longest prompt
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in plan) / \
            sum(len(b) * max(lengths[i] for i in b) for b in plan)
    unbucketed = batches(lengths, 16, shuffle=True, seed=1, bucket=False)
    assert padding(fixed[0]) < padding(fresh[0]) < padding(unbucketed) / 4
    assert batches(lengths, 16, shuffle=False, seed=0, megabatch=50) == batches(lengths, 16, shuffle=False, seed=0)


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(None, ["--learning_rate=1"])
    with pytest.raises(TypeError, match="epochs"):
        load_config(None, ["--epochs=ten"])
    with pytest.raises(ValueError, match="text_mode"):
        load_config(None, ["--text_mode=adapter"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: 3\n```\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML at line 2, column 1"):
        load_config(bad_yaml)
    with pytest.raises(ValueError, match=r"epochs: not valid YAML"):
        load_config(None, ["--epochs=["])
    with pytest.raises(ValueError, match="stages must name at least one"):
        load_config(None, ["--stages="])
    lora_cpu = "training/configs/lora_cpu.yaml"  # adapters on layers 8-11; an empty value clears the list
    assert load_config(lora_cpu, ["--cache_frozen_layers=false", "--lora_layers="]).lora_layers == ()
    assert load_config(lora_cpu, []).lora_layers == (8, 9, 10, 11)
    cfg = load_config("training/configs/cpu.yaml", ["--epochs=3"])
    assert (cfg.text_mode, cfg.epochs, cfg.batch_size, cfg.ema_decay) == ("frozen", 3, 32, 0.99)


def test_help_lists_every_config_file_and_every_key_with_a_default_that_reads_back(capsys):
    from dataclasses import fields

    from training.__main__ import main
    from training.config import TrainConfig

    assert main(["--config", "training/configs/cpu.yaml", "--help"]) == 0  # before any config is read or run
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m training")
    for path in Path("training/configs").glob("*.yaml"):
        assert f"  {path.name}\n" in shown
    assert "Time-boxed CPU fine-tune of the embedded default" in shown  # lora_cpu.yaml's opening comment
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        assert len(f.metadata.get("help", "")) > 10, f"{f.name} has no description"
        line = next(x for x in shown.splitlines() if x.startswith(f"  --{f.name}="))
        override = line.split()[0]
        assert getattr(load_config(None, [override]), f.name) == getattr(defaults, f.name), override
        assert " ".join(f.metadata["help"].split()[:4]) in " ".join(shown.split())


def test_a_dry_run_prints_the_resolved_config_and_checks_without_training(tmp_path, tiny_roberta_dir, capsys):
    import yaml

    from training.__main__ import main

    args = [f"--text_backbone={tiny_roberta_dir}", f"--run_dir={tmp_path / 'run'}", "--epochs=3", "--dry-run"]
    assert main(["--config", "training/configs/cpu.yaml", *args]) == 0
    shown = capsys.readouterr().out
    resolved = yaml.safe_load(shown)
    assert resolved == load_config("training/configs/cpu.yaml", args[:-1]).to_dict()
    assert resolved["epochs"] == 3 and resolved["text_mode"] == "frozen"  # the override, then the file
    assert shown.rstrip().endswith("starts afresh") and not (tmp_path / "run").exists()
    assert main(["--config", "training/configs/cpu.yaml", *args, "--meld_dir=" + str(tmp_path)]) == 2
    assert "no train_sent_emo.csv" in capsys.readouterr().err
    assert main(["--config"]) == 2 and "--config needs a file" in capsys.readouterr().err


def test_an_ablation_dry_run_lists_each_run_and_flags_one_its_directory_would_refuse(tmp_path, tiny_roberta_dir,
                                                                                     capsys):
    from training.ablate import main as ablate_main

    args = ["--rows", "text_sd,text_no_sd,full", "--seeds", "0,1", "--dry-run", f"--text_backbone={tiny_roberta_dir}",
            f"--run_dir={tmp_path / 'abl'}", "--text_mode=frozen", "--limit_dialogues=2"]
    assert ablate_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "full: not run (needs captions; caption_source: none)" and len(lines) == 5  # Table 4's order
    assert lines[1] == f"text_sd seed 0: {tmp_path / 'abl'}/ablation/text_sd/seed0 (starts afresh); stages=text"
    assert lines[4].endswith("seed1 (starts afresh); stages=text, self_distillation=false")
    assert not (tmp_path / "abl").exists()  # nothing was run or written
    other = tmp_path / "abl" / "ablation" / "text_no_sd" / "seed1"  # a run of another configuration left there
    (other / "text" / "last").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({**load_config(None, []).to_dict(), "lr": 0.5}))
    assert ablate_main(args) == 2
    refused = capsys.readouterr().out.splitlines()[4]
    assert refused.startswith("text_no_sd seed 1: ") and "REFUSED: run_dir" in refused and "other " in refused


def test_a_misspelt_key_is_refused_with_the_closest_key_named(capsys):
    from training.__main__ import main

    with pytest.raises(ValueError, match=r"did you mean lrr -> lr, sd_alfa -> sd_alpha\?"):
        load_config(None, ["--lrr=3", "--sd_alfa=0.5", "--zzzz=1"])
    with pytest.raises(ValueError, match=r"\['qqqq'\] \(python -m training --help"):  # nothing close: no guess
        load_config(None, ["--qqqq=1"])
    assert main(["--epoch=3"]) == 2
    assert "did you mean epoch -> epochs?" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("--lr=0", "lr must be > 0"), ("--lr=nan", "lr must be > 0"), ("--head_lr=-1e-3", "head_lr must be > 0"),
    ("--sd_alpha=1.5", "sd_alpha must be in [0, 1]"), ("--ema_decay=-0.1", "ema_decay must be in [0, 1]"),
    ("--dropout=1", "dropout must be in [0, 1)"), ("--limit_dialogues=-2", "limit_dialogues must be >= 0"),
    ("--max_tokens=0", "max_tokens must be >= 1"), ("--sd_tau=0", "sd_tau must be > 0"),
    ("--seed=-1", "seed must be in [0, 2**32)")])
def test_config_refuses_values_outside_their_range(override, message):
    from training.config import TrainConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, [override])
    name, value = override.removeprefix("--").split("=")
    with pytest.raises(ValueError, match=re.escape(message)):  # built in code, not read from a file: the same
        TrainConfig(**{name: type(getattr(TrainConfig(), name))(float(value))})
    for edge in ("--ema_decay=1", "--sd_alpha=0", "--warmup_ratio=0", "--grad_clip=0", "--dropout=0",
                 f"--seed={2**32 - 1}"):
        load_config(None, [edge])  # the ends each range allows


def test_what_cannot_run_here_is_refused_before_any_work_with_one_line(tmp_path, tiny_roberta_dir):
    from training.config import ConfigError
    from training.loop import preflight

    (tmp_path / "empty").mkdir()
    cases = [("caption_source", str(tmp_path / "no_captions"), "no such captions file or folder"),
             ("caption_source", str(tmp_path / "empty"), "a folder without captions"),
             ("text_backbone", str(tmp_path / "no_backbone"), "models are never downloaded"),
             ("meld_dir", str(tmp_path / "no_meld"), "no such folder"),
             ("meld_dir", str(tmp_path / "empty"), "no train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv"),
             ("device", "banana", "'banana': not a torch device")]
    for key, value, message in cases:
        cfg = tiny_cfg(tmp_path, tiny_roberta_dir, **{key: value})
        with pytest.raises(ConfigError, match=message):
            preflight(cfg)
        with pytest.raises(ConfigError, match=message):
            run(cfg, log=lambda *_: None)
        assert not (tmp_path / "run").exists()  # refused before the run directory is made
    for lora, message in (({"lora_layers": "1,9"}, r"lora_layers \[9\]: the backbone's encoder layers are 0-1"),
                          ({"lora_targets": "q_proj,v_proj"}, "lora_targets .* no module of the backbone has one of")):
        with pytest.raises(ConfigError, match=message):  # tiny RoBERTa: 2 layers, query / key / value / dense
            preflight(tiny_cfg(tmp_path, tiny_roberta_dir, text_mode="lora", **lora))
    preflight(tiny_cfg(tmp_path, tiny_roberta_dir, text_mode="lora", lora_layers="1", lora_targets="query,value"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="has 0 CUDA device"):
            preflight(tiny_cfg(tmp_path, tiny_roberta_dir, device="cuda"))
    preflight(tiny_cfg(tmp_path, tiny_roberta_dir, stages="text", caption_source=str(tmp_path / "none_needed")))
    # the commands print the reason as one usage line and exit 2
    missing = ["--config", "training/configs/cpu.yaml", f"--caption_source={tmp_path / 'no_captions'}"]
    for command in (["training"], ["training.ablate"]):
        proc = subprocess.run([sys.executable, "-m", *command, *missing, f"--run_dir={tmp_path / 'r'}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "no such captions file or folder" in proc.stderr.strip().splitlines()[-1]


def test_config_round_trips_through_a_run_directorys_json():
    import json

    from training.config import TrainConfig

    cfg = load_config("training/configs/lora.yaml", ["--fusion_alpha_init=0.45", "--lora_layers=10,11"])
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.lora_layers == (10, 11)
    assert again.model_config().fusion_alpha_init == 0.45 and again.model_config().max_tokens == cfg.max_tokens
    with pytest.raises(TypeError, match="epochs"):
        TrainConfig.from_dict({**cfg.to_dict(), "epochs": "many"})
    with pytest.raises(TypeError, match="lora_layers: expected int"):
        load_config("training/configs/lora.yaml", ["--lora_layers=top,two"])
    assert load_config("training/configs/lora.yaml", ["--lora_layers=11"]).lora_layers == (11,)  # one layer
    assert load_config(None, ["--stages=text"]).stages == ("text",)


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_export_rebuilds_the_run_checkpoint_from_its_best_weights(tmp_path, tiny_roberta_dir, mode):
    from training.export import export

    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, text_mode=mode, lr=1e-3, epochs=1)
    run(cfg, log=lambda *_: None)
    exported = export(tmp_path / "run", tmp_path / "exported")
    dialogue = [("Ross", "I got the job!"), ("Rachel", "No way!")]
    run_checkpoint = tmp_path / "run" / "checkpoint"
    a = EmotionRecognizer.from_checkpoint(run_checkpoint, load_caption_embedder=False).predict(dialogue)
    b = EmotionRecognizer.from_checkpoint(exported, load_caption_embedder=False).predict(dialogue)
    assert a.probabilities == b.probabilities
    from training.export import main as export_main

    best = json.loads((exported / "manifest.json").read_text())["text_best"]  # scores, not the run's answers
    assert 0 <= best["test"]["wa_f1"] <= 100 and "predictions" not in best["test"] and "predictions" not in best["dev"]
    manifest = (exported / "manifest.json").read_bytes()
    with pytest.raises(SystemExit) as exit_:  # a checkpoint (e.g. checkpoints/default) is not overwritten silently
        export_main([str(tmp_path / "run"), str(exported)])
    assert exit_.value.code == 2 and (exported / "manifest.json").read_bytes() == manifest
    assert export_main([str(tmp_path / "run"), str(tmp_path / "second")]) == 0
    assert export_main([str(tmp_path / "run"), str(exported), "--force"]) == 0


def torchrun_training(tmp_path, tiny_roberta_dir, run_dir: str, *extra: str) -> None:
    """``python -m training`` on a tiny frozen-backbone run under torchrun, 2 CPU ranks with gloo."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = {"text_backbone": tiny_roberta_dir, "limit_dialogues": 6, "epochs": 2, "batch_size": 4,
                 "run_dir": str(tmp_path / run_dir), "feature_cache": str(tmp_path / "features"),
                 "text_mode": "frozen", "head_lr": 1e-2, "stages": "text"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "training"] + [f"--{k}={v}" for k, v in overrides.items()] + list(extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]  # a failed rank's traceback, before torchrun's summary


def test_two_gloo_ranks_under_torchrun_end_with_identical_weights_and_resume_as_if_uninterrupted(
        tmp_path, tiny_roberta_dir):
    torchrun_training(tmp_path, tiny_roberta_dir, "ddp")
    r0 = load_file(tmp_path / "ddp" / "text" / "final_rank0.safetensors")
    r1 = load_file(tmp_path / "ddp" / "text" / "final_rank1.safetensors")
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    info = json.loads((tmp_path / "ddp" / "text" / "result.json").read_text())
    assert info["epoch"] == 2 and len(info["history"]) == 2
    assert (tmp_path / "ddp" / "checkpoint" / "manifest.json").is_file()  # written once, by rank 0
    # stopped by its time budget after epoch 1, then resumed: every rank draws epoch 2's dropout masks as the
    # uninterrupted run did (rank 1 used to resume with rank 0's saved RNG state), so the weights are the same
    torchrun_training(tmp_path, tiny_roberta_dir, "stopped", "--time_budget_min=0.0001")
    assert json.loads((tmp_path / "stopped" / "text" / "result.json").read_text())["stopped_early"] == 1
    torchrun_training(tmp_path, tiny_roberta_dir, "stopped")
    resumed = load_file(tmp_path / "stopped" / "text" / "final_rank1.safetensors")
    assert all(torch.equal(resumed[k], r1[k]) for k in r1)


def test_parallel_ablation_runs_each_seed_as_its_own_process_and_matches_in_process(tmp_path, tiny_roberta_dir):
    from training.ablate import ROWS, run_rows, write_report

    rows = [r for r in ROWS if r.name in ("text_sd", "text_no_sd")]
    serial = run_rows(tiny_cfg(tmp_path / "serial", tiny_roberta_dir), rows[:1], [0], log=lambda *_: None)
    parallel = run_rows(tiny_cfg(tmp_path / "par", tiny_roberta_dir), rows, [0, 1], log=lambda *_: None, parallel=4)
    assert [len(e["runs"]) for e in parallel] == [2, 2] and not any("failed" in e for e in parallel)
    for entry in parallel:  # each run its own directory, log and config
        for seed in (0, 1):
            assert (tmp_path / "par" / "run" / "ablation" / entry["row"] / f"seed{seed}" / "results.json").is_file()
    # the same configuration gives the same score in a subprocess as in process (seeded, deterministic)
    assert parallel[0]["runs"][0]["test_wa_f1"] == pytest.approx(serial[0]["runs"][0]["test_wa_f1"], abs=1e-9)
    write_report(parallel, tiny_cfg(tmp_path, tiny_roberta_dir), tmp_path / "ablation")
    report = (tmp_path / "ablation.md").read_text()
    assert "| text_no_sd | 1 |" in report and "Self-distillation gain" in report
    from training.loop import hardware

    assert f"device cpu ({hardware('cpu')})" in report  # what trained the runs, as each run recorded it
    assert "| epoch | text_sd | text_sd EMA teacher | text_no_sd |" in report and "| 2 | " in report  # per epoch
    sd_records = [h for r in parallel[0]["runs"] for h in r["text_history"]]  # the EMA teacher is scored too
    assert all(0 <= h["teacher_test_wa_f1"] <= 100 for h in sd_records)
    assert not any("teacher_test_wa_f1" in h for r in parallel[1]["runs"] for h in r["text_history"])
    by_seed = {e["row"]: {r["seed"]: r["test_wa_f1"] for r in e["runs"]} for e in parallel}
    assert f"seed 1 {by_seed['text_sd'][1] - by_seed['text_no_sd'][1]:+.2f}" in report
    assert "epoch 1 is identical" in report  # CE only in both, deterministic CPU kernels: measured, not claimed
    # each run keeps its dev-selected test predictions; the mean gain's interval resamples the test dialogues
    from ddvlm_core.metrics import bootstrap_wa_f1_difference, metrics
    from training.ablate import from_run_lengths, labels_of

    sd_runs, no_sd_runs = parallel[0]["runs"], parallel[1]["runs"]
    gold, dialogues = labels_of(sd_runs[0]["test_gold"]), from_run_lengths(sd_runs[0]["test_dialogues"])
    for one in sd_runs + no_sd_runs:
        assert len(one["test_predictions"]) == len(gold) == len(dialogues) > 0
        assert metrics(gold, labels_of(one["test_predictions"]))["wa_f1"] == pytest.approx(one["test_wa_f1"])
    saved = json.loads((tmp_path / "par" / "run" / "ablation" / "text_sd" / "seed0" / "results.json").read_text())
    assert dialogues == saved["test_examples"]["dialogues"] and gold == saved["test_examples"]["gold"]
    interval = bootstrap_wa_f1_difference(gold, [labels_of(r["test_predictions"]) for r in no_sd_runs],
                                          [labels_of(r["test_predictions"]) for r in sd_runs], dialogues)
    mean_gain = sum(by_seed["text_sd"][k] - by_seed["text_no_sd"][k] for k in (0, 1)) / 2
    assert interval["difference"] == pytest.approx(mean_gain, abs=1e-9)
    assert (f"Over the test dialogues (2 seed pairs, every run scored on the same resamples): mean gain "
            f"{interval['difference']:+.2f}, 95 % interval {interval['low']:.2f} to {interval['high']:.2f}") in report
    # each run's calibration as trained (Section 3.4's overconfidence), from the run's own result
    run0 = parallel[0]["runs"][0]
    saved = json.loads((tmp_path / "par" / "run" / "ablation" / "text_sd" / "seed0" / "text" / "result.json")
                       .read_text())["calibration"]
    assert run0["text_calibration"] == saved
    assert (f"| text_sd | 0 | {run0['test_wa_f1']:.2f} |" in report
            and f" {saved['test']['as_trained']['ece']:.2f} | {saved['temperature']:.3f} |" in report)
    import statistics

    eces = [r["text_calibration"]["test"]["as_trained"]["ece"] for r in parallel[0]["runs"]]
    assert (f"test ECE of the text branch as trained, SD {statistics.mean(eces):.2f} ± {statistics.stdev(eces):.2f}"
            " (2) %") in report
    # --render rebuilds the same Markdown from the JSON alone (a report brought back from another machine)
    (tmp_path / "ablation.md").unlink()
    from training.ablate import main as ablate_main

    assert ablate_main(["--render", str(tmp_path / "ablation.json")]) == 0
    assert (tmp_path / "ablation.md").read_text() == report
    # --merge: the same runs brought back by two sessions, one seed each, make the same report
    import copy

    from training.ablate import summarize

    for seed in (0, 1):
        part = [copy.deepcopy(e) for e in parallel]
        part = [summarize({**e, "seeds": [seed], "runs": [r for r in e["runs"] if r["seed"] == seed]}) for e in part]
        write_report(part, tiny_cfg(tmp_path, tiny_roberta_dir, seed=seed), tmp_path / f"seed{seed}")
    halves = [str(tmp_path / "seed0.json"), str(tmp_path / "seed1.json")]
    assert ablate_main(["--merge", *halves, "--report", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged.md").read_text() == report
    assert ablate_main(["--merge", halves[0], halves[0], "--report", str(tmp_path / "twice")]) == 2  # seed twice
    write_report(parallel, tiny_cfg(tmp_path, tiny_roberta_dir, epochs=3), tmp_path / "longer")
    assert ablate_main(["--merge", halves[0], str(tmp_path / "longer.json"), "--report", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "twice.md").exists() and not (tmp_path / "x.md").exists()
    for missing in (["--render", str(tmp_path / "gone.json")], ["--merge", halves[0], str(tmp_path / "gone.json")]):
        with pytest.raises(SystemExit) as exit_:  # a usage error naming the file, not a traceback
            ablate_main(missing)
        assert exit_.value.code == 2


def test_per_epoch_means_show_each_row_at_every_epoch_over_the_seeds_that_reached_it():
    from training.ablate import epoch_means, epoch_table

    def run(seed, history):
        return {"seed": seed, "text_history": [{"epoch": e, "dev_wa_f1": d, "test_wa_f1": t} for e, d, t in history]}

    sd = {"row": "text_sd", "runs": [run(0, [(1, 50, 55), (2, 60, 63)]), run(1, [(1, 52, 57)])]}  # seed 1 stopped
    sd["runs"][0]["text_history"][1] |= {"teacher_dev_wa_f1": 61.0, "teacher_test_wa_f1": 64.0}  # from epoch 2
    no_sd = {"row": "text_no_sd", "runs": [run(0, [(1, 50, 55), (2, 61, 62), (3, 61.5, 61)])]}
    assert epoch_means(sd) == {1: (2, 51.0, 56.0), 2: (1, 60.0, 63.0)}
    assert epoch_means(sd, "teacher_") == {2: (1, 61.0, 64.0)} and epoch_means(no_sd, "teacher_") == {}
    table = epoch_table([sd, no_sd, {"row": "full", "not_run": "needs captions"}])
    assert "| epoch | text_sd | text_sd EMA teacher | text_no_sd |" in table
    assert "| 1 | 51.00 / 56.00 (2) | — | 50.00 / 55.00 (1) |" in table
    assert "| 2 | 60.00 / 63.00 (1) | 61.00 / 64.00 (1) | 61.00 / 62.00 (1) |" in table
    assert "| 3 | — | — | 61.50 / 61.00 (1) |" in table
    assert epoch_table([{"row": "full", "not_run": "needs captions"}]) == []


def test_the_paired_sd_gain_says_how_far_apart_epoch_one_already_was():
    from training.ablate import epoch_one_spread, paired_line

    def row(name, firsts, scores):
        return {"row": name, "runs": [{"seed": k, "test_wa_f1": t, "text_history": [{"epoch": 1, "dev_wa_f1": d}]}
                                      for k, (d, t) in enumerate(zip(firsts, scores))]}

    sd, no_sd = row("text_sd", [50.0, 52.0], [63.0, 64.0]), row("text_no_sd", [50.0, 52.0], [62.0, 62.5])
    assert epoch_one_spread(sd, no_sd) == 0.0
    assert paired_line(sd, no_sd) == ["Paired by seed (same initialisation and batch order; epoch 1 is identical): "
                                      "seed 0 +1.00, seed 1 +1.50; mean +1.25 ± 0.35."]
    gpu_no_sd = row("text_no_sd", [51.5, 51.0], [62.0, 62.5])  # e.g. full fine-tuning on a GPU
    assert epoch_one_spread(sd, gpu_no_sd) == 1.5
    assert "epoch 1, CE only in both, already differs by up to 1.50 dev WA-F1" in paired_line(sd, gpu_no_sd)[0]
    assert paired_line(row("a", [1.0], [2.0]), row("b", [1.0], [2.0])) == []  # one seed: no spread to show


def test_a_failing_parallel_run_is_reported_not_raised(tmp_path, tiny_roberta_dir):
    from training.ablate import ROWS, run_rows

    cfg = tiny_cfg(tmp_path, tiny_roberta_dir, text_backbone=str(tmp_path / "missing-backbone"))
    [entry] = run_rows(cfg, [r for r in ROWS if r.name == "text_sd"], [0], log=lambda *_: None, parallel=2)
    assert entry["failed"][0]["returncode"] != 0 and "mean" not in entry


def test_evaluate_checkpoint_scores_the_whole_split_as_the_recognizer_predicts(tiny_text_checkpoint, capsys):
    from ddvlm_core.labels import LABELS
    from training.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(tiny_text_checkpoint, ("dev",), log=lambda *_: None)
    assert "dev (1109 utterances):   0%|" in capsys.readouterr().err  # a progress bar with an ETA while it runs
    dev = result["splits"]["dev"]
    assert dev["n"] == 1109 and result["modules"] == ["text_head"]
    # independent check on one dialogue: the recognizer's own top labels give the same correct count
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    rows = dialogues("dev")[0]
    turns = [(r.speaker, r.text) for r in rows]
    top = [rec.predict(turns[: k + 1]).top_label for k in range(len(rows))]
    assert [LABELS[i] for i in dev["predictions"][: len(rows)]] == top
    confusion = torch.tensor(dev["confusion"])
    assert confusion.sum() == 1109 and confusion.trace() / 1109 * 100 == pytest.approx(dev["accuracy"])


def test_cache_files_are_written_whole_or_not_at_all(tmp_path):
    """Feature and caption-embedding caches are shared by DDP ranks and parallel seeds: written to a temporary
    name and renamed, so a reader never loads a file being written."""
    from training.features import save_atomically

    path = tmp_path / "cache" / "dev-abc.safetensors"
    for value in (1.0, 2.0):  # a second writer replaces the file whole
        save_atomically({"h_text": torch.full((3, 4), value)}, path, metadata={"split": "dev"})
        assert torch.equal(load_file(path)["h_text"], torch.full((3, 4), value))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    with pytest.raises(Exception):
        save_atomically({"h_text": "not a tensor"}, tmp_path / "cache" / "bad.safetensors")
    assert not (tmp_path / "cache" / "bad.safetensors").exists()


def test_a_fine_tuned_copy_of_the_backbone_does_not_reuse_its_cached_features(tmp_path, tiny_roberta_dir):
    """Two backbones of one architecture (same file names and sizes, same config), e.g. a model and its fine-tuned
    copy in another folder, get their own frozen-mode features; only the names and sizes were hashed before."""
    import shutil

    from safetensors.torch import save_file

    from training.features import backbone_digest

    tuned = shutil.copytree(tiny_roberta_dir, tmp_path / "tuned")
    weights = load_file(tuned / "model.safetensors")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}  # every tensor changed
    save_file(weights, tuned / "model.safetensors", metadata={"format": "pt"})
    assert (tuned / "model.safetensors").stat().st_size == (Path(tiny_roberta_dir) / "model.safetensors").stat().st_size
    assert backbone_digest(str(tuned)) != backbone_digest(tiny_roberta_dir)
    assert backbone_digest(tiny_roberta_dir) == backbone_digest(str(shutil.copytree(tiny_roberta_dir, tmp_path / "c")))
    cache = tmp_path / "features"
    h = {}
    for name, backbone in (("base", tiny_roberta_dir), ("tuned", str(tuned))):
        run(tiny_cfg(tmp_path, backbone, epochs=1, limit_dialogues=2, stages="text", feature_cache=str(cache),
                     run_dir=str(tmp_path / "runs" / name)), log=lambda *_: None)
        h[name] = {p.name: load_file(p)["h_text"] for p in cache.glob("dev-*.safetensors")}
    (base,), (new,) = h["base"].values(), [v for k, v in h["tuned"].items() if k not in h["base"]]
    assert base.shape == new.shape and not torch.allclose(base, new)  # its own features, not the base model's


def test_the_run_config_is_replaced_whole_so_that_another_rank_never_reads_half_of_it(tmp_path):
    """Rank 0 rewrites config.json while rank 1 of the same call reads the earlier one (refuse_other_runs_state):
    a rename, never a truncated file, and no temporary file left."""
    from training.loop import write_atomically

    target = tmp_path / "config.json"
    target.write_text('{"seed": 0}', encoding="utf-8")
    before = target.stat().st_ino
    write_atomically(target, '{"seed": 1}')
    assert json.loads(target.read_text()) == {"seed": 1} and target.stat().st_ino != before  # a new file swapped in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
