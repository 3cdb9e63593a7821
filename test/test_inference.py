import pytest
import torch

from ddvlm_core.captioner import Caption
from ddvlm_core.context import Dialogue
from ddvlm_core.inference import EmotionRecognizer
from ddvlm_core.labels import LABELS
from ddvlm_core.meld import dialogues


@pytest.fixture(scope="module")
def recognizer(mpnet_ddvlm, caption_embedder):
    model, tok = mpnet_ddvlm
    return EmotionRecognizer(model, tok, caption_embedder, has_visual_branch=True)


def test_distribution_is_valid_and_text_only_without_caption(recognizer):
    p = recognizer.predict([("Ross", "I got the job!"), ("Rachel", "Oh my god!")])
    assert p.labels == LABELS and len(p.probabilities) == 7
    assert sum(p.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert p.top_label == LABELS[max(range(7), key=p.probabilities.__getitem__)]
    assert p.confidence == max(p.probabilities)
    assert p.modalities == "text" and p.probabilities == p.text_probabilities and p.speaker_token == "<s2>"


def test_predictions_are_causal_on_a_meld_dialogue(recognizer):
    rows = dialogues("test")[1]
    turns = [(r.speaker, r.text) for r in rows]
    alone = [recognizer.predict(turns[: k + 1]).probabilities for k in range(3)]
    in_batch = recognizer.predict_batch([turns[: k + 1] for k in range(len(turns))])
    for k in range(3):  # later utterances (and batch padding) never change an earlier prediction
        assert in_batch[k].probabilities == pytest.approx(alone[k], abs=1e-5)


def test_caption_adds_the_visual_modality(recognizer):
    turns = [("Ross", "I got the job!"), ("Rachel", "Oh my god!")]
    p = recognizer.predict(turns, Caption("Her eyebrows are raised and her mouth is open.", "qwen2.5-vl", 4))
    assert p.modalities == "text+visual" and p.caption_source == "qwen2.5-vl"
    assert p.probabilities != p.text_probabilities
    assert sum(p.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_caption_of_only_emotion_words_falls_back_to_text_with_a_flag(recognizer):
    p = recognizer.predict([("Ross", "Hi")], "happy and excited")
    assert p.modalities == "text" and "caption-empty-after-filter" in p.flags and p.caption == ""


def test_checkpoint_without_visual_branch_ignores_captions_with_a_flag(mpnet_ddvlm):
    model, tok = mpnet_ddvlm
    p = EmotionRecognizer(model, tok).predict([("Ross", "Hi")], "He is nodding.")
    assert p.modalities == "text" and "no-visual-branch" in p.flags


def test_no_speaker_identity_and_rolling_dialogues_work(recognizer):
    d = Dialogue(max_turns=3)
    d.add(None, "Hello?")
    d.add("", "Is anyone there?")
    p = recognizer.predict(d)
    assert p.speaker_token == "<s0>"


def test_bad_input_is_a_clear_error(recognizer):
    with pytest.raises(ValueError, match="empty dialogue"):
        recognizer.predict([])
    with pytest.raises(ValueError, match="UTF-8"):
        recognizer.predict([("Ross", b"\xff\xfe bad")])
    with pytest.raises(ValueError, match="empty"):
        recognizer.predict([("Ross", "   ")])
    with pytest.raises(TypeError, match="caption"):
        recognizer.predict([("Ross", "Hi")], caption=3)
    for one_text in ("I got the job!", b"I got the job!"):  # not a dialogue of one turn per character
        with pytest.raises(TypeError, match="not one text"):
            recognizer.predict(one_text)
    assert recognizer.predict(["I got the job!"]).speaker_token == "<s0>"  # as a list it is one turn
    assert recognizer.predict_batch([]) == []  # a batch of no dialogues is no predictions, not an error
    with pytest.raises(ValueError, match="one caption"):
        recognizer.predict_batch([["Hi"]], [None, None])


def test_predict_many_answers_each_context_in_order_as_predict_does(tiny_text_checkpoint):
    """Many contexts, batched by length (their order shuffled for the batches): each answer is the one predict
    gives that context alone, in the order given."""
    from ddvlm_core.context import make_turns

    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    dialogue = Dialogue()
    dialogue.add("Ross", "We were on a break!")
    contexts = [[("Ross", "I got the job!"), ("Rachel", "No way! That is so great, I am so happy for you!")],
                ["Hi."], dialogue, make_turns([("Joey", "How you doin'?")]),
                [("Monica", "Привет!")], [("Phoebe", "Smelly cat, smelly cat, what are they feeding you?")]]
    many = rec.predict_many(contexts, batch_size=2)
    alone = [rec.predict(c) for c in contexts]
    assert [p.top_label for p in many] == [p.top_label for p in alone]
    assert [p.flags for p in many] == [p.flags for p in alone] and "transcript-not-english" in many[4].flags
    for m, a in zip(many, alone):
        assert m.probabilities == pytest.approx(a.probabilities, abs=1e-5)
    assert rec.predict_many([]) == []


def test_warm_up_records_every_length_bucket_and_bucketed_predictions_match(tiny_text_checkpoint):
    """With length buckets (what compile_text sets for CUDA graphs on a GPU) warm_up runs each bucket width
    twice (run, then record), every backbone call is a bucket width, and predictions are those without."""
    from ddvlm_core.text import bucket_widths

    plain = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    bucketed = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    bucketed.model.text.length_bucket = (64, 511)
    widths = []
    bucketed.model.text.backbone.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    bucketed.warm_up()
    assert widths[:2] == [64, 64]  # the two dialogue calls
    assert widths[2:] == [w for w in bucket_widths(64, 511) for _ in range(2)]
    dialogue = [("Ross", "We were on a break!")] * 12
    for n in (1, 6, 12):
        a, b = plain.predict(dialogue[:n]), bucketed.predict(dialogue[:n])
        assert max(abs(p - q) for p, q in zip(a.probabilities, b.probabilities)) < 1e-5
    assert set(widths) <= set(bucket_widths(64, 511))


def test_the_readme_python_example_runs_on_the_embedded_default_and_prints_what_it_says(monkeypatch, capsys):
    import ast
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (example,) = re.findall(r"```python\n(# Emotion of the last utterance.*?)```", (repo / "README.md").read_text(),
                            re.S)
    monkeypatch.chdir(repo)
    namespace = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    first, second, third, fourth = capsys.readouterr().out.splitlines()
    prediction, batch = namespace["prediction"], namespace["batch"]
    assert first == f"<s2> {prediction.top_label} {prediction.confidence:.2f} text"  # Rachel: the second speaker
    shown = ast.literal_eval(second)  # the dict the example printed
    assert list(shown) == list(LABELS) and sum(shown.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.top_label == max(shown, key=shown.get)
    assert [p.speaker_token for p in batch] == ["<s1>", "<s2>"]
    assert batch[1].probabilities == pytest.approx(prediction.probabilities, abs=1e-5)  # batched = alone
    assert third == "('transcript-not-english',)"
    assert fourth == "('transcript-unpunctuated',)"  # flagged as written; read with the full stop: the logits of
    recognizer, config = namespace["recognizer"], namespace["recognizer"].model.config  # "i got the job."
    ended = torch.tensor(recognizer.predict([("Ross", "i got the job")]).probabilities).log()
    recognizer.end_unpunctuated_turns = False
    plain = torch.tensor(recognizer.predict([("Ross", "i got the job.")]).probabilities).log()
    logits = [ended * config.unpunctuated_temperature, plain * config.text_temperature]  # each at its temperature
    torch.testing.assert_close(*(x - x.mean() for x in logits), rtol=0, atol=1e-4)
