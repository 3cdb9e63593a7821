import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddvlm_core.calibration import (calibration_metrics, expected_calibration_error, fit_temperature, nll,
                                    reliability)


def test_ece_known_answer():
    """4 answers, 2 bins: (0.9 right, 0.8 wrong) fall in (0.5, 1], mean confidence 0.85, accuracy 0.5, gap 0.35;
    (0.4 right, 0.5 right) in (0, 0.5] (0.5 exactly is bin 1's upper edge), confidence 0.45, accuracy 1, gap 0.55.
    ECE = 2/4 * 0.35 + 2/4 * 0.55 = 0.45."""
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3], [0.25, 0.5, 0.25]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(45.0)
    rows = reliability(probs, labels, n_bins=2)
    expected = [(2, pytest.approx(45.0), 100.0), (2, pytest.approx(85.0), 50.0)]
    assert [(r["n"], r["confidence"], r["accuracy"]) for r in rows] == expected
    perfect = torch.eye(3)
    assert expected_calibration_error(perfect, torch.arange(3)) == 0.0


def test_fitted_temperature_is_the_nll_minimum_and_recovers_a_known_one():
    """Labels drawn from softmax(z / 2.5): the fitted T is 2.5 up to sampling noise; at T* the NLL's derivative
    in beta = 1/T, mean_i(E_p[z_i] - z_iy), is 0, and T* +- 1 % both score a higher NLL."""
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(100_000, 7, generator=g, dtype=torch.float64)
    labels = torch.multinomial(F.softmax(logits / 2.5, -1), 1, generator=g).squeeze(1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.02)
    p = F.softmax(logits / t, -1)
    gradient = float(((p * logits).sum(-1) - logits.gather(1, labels[:, None]).squeeze(1)).mean())
    assert abs(gradient) < 1e-5
    assert nll(logits, labels, t) < min(nll(logits, labels, t * 1.01), nll(logits, labels, t / 1.01))
    over = fit_temperature(logits / 2.5 * 0.4, labels)  # the same data, logits shrunk: T follows (0.4)
    assert over == pytest.approx(t / 2.5 * 0.4, rel=1e-4)
    with torch.no_grad():  # T never changes the answer
        assert torch.equal((logits / t).argmax(-1), logits.argmax(-1))


def test_fit_temperature_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(torch.zeros(0, 7), torch.zeros(0))
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(torch.zeros(3, 7), torch.zeros(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_temperature(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))


def test_calibration_metrics_known_answer():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    m = calibration_metrics(logits, labels, temperature=2.0)
    p = F.softmax(logits / 2.0, -1)
    assert m["nll"] == pytest.approx(-(math.log(p[0, 0]) + math.log(p[1, 0])) / 2)
    assert m["brier"] == pytest.approx((((p[0] - torch.tensor([1, 0])) ** 2).sum()
                                        + ((p[1] - torch.tensor([1, 0])) ** 2).sum()).item() / 2)
    assert m["accuracy"] == 50.0 and m["mean_confidence"] == pytest.approx(100 * float(p.max(-1).values.mean()))


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "2"])
def test_a_checkpoint_config_refuses_a_temperature_that_is_not_a_positive_number(value):
    from ddvlm_core.model import DDVLMConfig

    for name in ("text_temperature", "fused_temperature", "unpunctuated_temperature"):
        with pytest.raises(ValueError, match=f"{name} must be a number > 0"):
            DDVLMConfig(**{name: value})
    assert DDVLMConfig(unpunctuated_temperature=None).unpunctuated_temperature is None  # the text one applies


def test_the_recognizer_answers_with_the_checkpoint_temperatures(tiny_visual_checkpoint, tmp_path):
    """Text answers use text_temperature, captioned ones fused_temperature, text answers flagged
    transcript-unpunctuated unpunctuated_temperature, row by row in one batch; the top label never changes, the
    confidence does."""
    import shutil

    from ddvlm_core.checkpoint import update_manifest
    from ddvlm_core.inference import EmotionRecognizer

    turns = [("Ross", "I got the job!"), ("Rachel", "Oh my god, no way!")]
    asr = [("Ross", "i got the job"), ("Rachel", "oh my god no way")]  # an ASR that does not punctuate
    caption = "The woman's eyes widen and her mouth opens; she raises both hands to her face."
    plain = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    before = plain.predict_batch([turns, turns, asr], [None, caption, None])
    scaled_dir = shutil.copytree(tiny_visual_checkpoint, tmp_path / "scaled")
    update_manifest(scaled_dir, config={"text_temperature": 0.5, "fused_temperature": 3.0})
    scaled = EmotionRecognizer.from_checkpoint(scaled_dir)
    after = scaled.predict_batch([turns, turns, asr], [None, caption, None])
    assert "transcript-unpunctuated" in after[2].flags
    t_plain = after[2].probabilities  # no unpunctuated_temperature: the text one
    update_manifest(scaled_dir, config={"unpunctuated_temperature": 4.0})
    after = EmotionRecognizer.from_checkpoint(scaled_dir).predict_batch([turns, turns, asr], [None, caption, None])
    expected_plain = F.softmax(torch.tensor(before[2].probabilities, dtype=torch.float64).log() / 0.5, -1)
    assert torch.allclose(torch.tensor(t_plain, dtype=torch.float64), expected_plain, atol=1e-5)
    for b, a, t in zip(before, after, (0.5, 3.0, 4.0)):
        expected = F.softmax(torch.tensor(b.probabilities, dtype=torch.float64).log() / t, -1)
        assert torch.allclose(torch.tensor(a.probabilities, dtype=torch.float64), expected, atol=1e-5)
        assert a.top_label == b.top_label and a.modalities == b.modalities
    expected_text = F.softmax(torch.tensor(before[1].text_probabilities, dtype=torch.float64).log() / 0.5, -1)
    assert torch.allclose(torch.tensor(after[1].text_probabilities, dtype=torch.float64), expected_text, atol=1e-5)
    assert after[0].confidence > before[0].confidence and after[1].confidence < before[1].confidence


def test_calibrate_command_fits_on_dev_writes_the_manifest_and_keeps_every_answer(tiny_text_checkpoint, tmp_path):
    import shutil

    from ddvlm_core.checkpoint import load_checkpoint
    from ddvlm_core.inference import EmotionRecognizer
    from training.calibrate import main

    checkpoint = shutil.copytree(tiny_text_checkpoint, tmp_path / "ckpt")
    weights = {p.name: p.read_bytes() for p in checkpoint.glob("*.safetensors")}
    assert main([str(checkpoint), "--report-dir", str(tmp_path / "reports")]) == 0
    report = json.loads((tmp_path / "reports" / "calibration.json").read_text())
    text = report["branches"]["text"]
    dev, test = text["splits"]["dev"], text["splits"]["test"]
    assert (dev["n"], test["n"]) == (1109, 2610) and report["fitted_on"] == "MELD dev"
    assert dev["calibrated"]["nll"] <= dev["as_trained"]["nll"]  # fitted to minimise it
    for split in (dev, test):
        assert split["calibrated"]["accuracy"] == split["as_trained"]["accuracy"]
        assert sum(r["n"] for r in split["calibrated"]["reliability"]) == split["n"]
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["config"]["text_temperature"] == text["temperature"] != 1.0
    assert manifest["config"]["fused_temperature"] == 1.0 and manifest["calibration"]["fitted_on"] == "MELD dev"
    # transcripts without punctuation get their own temperature, fitted on dev written so, on the answers flagged
    from ddvlm_core.asr_noise import unpunctuate
    from ddvlm_core.context import unpunctuated
    from ddvlm_core.meld import dialogues

    plain = report["branches"]["unpunctuated"]
    flagged = sum(unpunctuated(unpunctuate(r.text)) for rows in dialogues("dev").values() for r in rows)
    assert plain["splits"]["dev"]["n"] == flagged and 600 < flagged < 1109  # those of 3+ words
    assert manifest["config"]["unpunctuated_temperature"] == plain["temperature"] != text["temperature"]
    dev_plain = plain["splits"]["dev"]
    assert dev_plain["calibrated"]["nll"] <= dev_plain["text_temperature"]["nll"]
    assert dev_plain["text_temperature"]["temperature"] == text["temperature"]
    assert {p.name: p.read_bytes() for p in checkpoint.glob("*.safetensors")} == weights
    load_checkpoint(checkpoint)  # the hashes still hold
    md = (tmp_path / "reports" / "calibration.md").read_text()
    assert f"T = {text['temperature']:.3f}" in md and "| test | 2610 |" in md
    # the recognizer now answers with that temperature: the answers of before, at T
    rows = dialogues("dev")[0]
    old = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    new = EmotionRecognizer.from_checkpoint(checkpoint, load_caption_embedder=False)
    context = [(r.speaker, r.text) for r in rows]
    a, b = old.predict(context), new.predict(context)
    plain = report["branches"]["unpunctuated"]
    assert new.calibration == (f"temperature {text['temperature']:.3f} (text), 1.000 (fused), "
                               f"{plain['temperature']:.3f} (text without punctuation), fitted on MELD dev")
    assert old.calibration.startswith("not calibrated")  # what /diagnostics says (confidence_calibration)
    assert torch.allclose(torch.tensor(b.probabilities, dtype=torch.float64),
                          F.softmax(torch.tensor(a.probabilities, dtype=torch.float64).log() / text["temperature"], -1),
                          atol=1e-5)
    # the model card lists it, from this report of this checkpoint only
    from training.model_card import calibration_lines

    [line] = calibration_lines(report, checkpoint)
    assert line.startswith(f"- **Calibrated confidence**: temperature {text['temperature']:.3f}, fitted on MELD dev")
    assert f"from {test['as_trained']['ece']:.2f} % to {test['calibrated']['ece']:.2f} %" in line
    assert (f"have their own, {plain['temperature']:.3f}: with the text one their ECE on test written so is "
            f"{plain['splits']['test']['text_temperature']['ece']:.2f} %") in line
    assert calibration_lines(report, tmp_path / "checkpoints" / "another") == []
    from ddvlm_core.checkpoint import update_manifest

    update_manifest(checkpoint, config={"text_temperature": 1.0})  # since re-trained or reset: not this report's
    assert calibration_lines(report, Path(checkpoint)) == []


def test_coverage_says_how_many_answers_a_confidence_threshold_keeps_and_how_often_they_are_right():
    from ddvlm_core.calibration import coverage

    def answer(confidence, label):  # the rest of the probability spread over the 6 other classes
        p = torch.full((7,), (1 - confidence) / 6, dtype=torch.float64)
        p[label] = confidence
        return p

    probabilities = torch.stack([answer(0.35, 0), answer(0.55, 1), answer(0.75, 2), answer(0.95, 3)])
    labels = torch.tensor([4, 1, 5, 3])  # the 0.35 and 0.75 answers are wrong
    rows = coverage(probabilities, labels, thresholds=(0.3, 0.5, 0.7, 0.9, 0.99))
    assert [(r["threshold"], r["n"], r["share"], r["accuracy"]) for r in rows] == [
        (0.3, 4, 100.0, 50.0), (0.5, 3, 75.0, pytest.approx(200 / 3)), (0.7, 2, 50.0, 50.0), (0.9, 1, 25.0, 100.0),
        (0.99, 0, 0.0, None)]
