"""rosbag2 bags of MELD dialogues, written and read with rosbags, replayed through the real node."""
import json

import pytest

from ddvlm_core.inference import EmotionRecognizer
from ddvlm_core.meld import dialogues
from ddvlm_ros.bag import BagError, load_labels, read_bag, timeline, write_meld_bag
from ddvlm_ros.replay import offline_predictions, replay


@pytest.mark.parametrize("storage, suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_write_read_round_trip(tmp_path, storage, suffix):
    bag = write_meld_bag(tmp_path / "b", "test", [0, 3], storage=storage, frames="synthetic", fps=4)
    assert any(p.suffix == suffix for p in bag.iterdir())
    msgs = list(read_bag(bag))
    utts = [m for m in msgs if m.topic == "/utterance"]
    rows = dialogues("test")[0] + dialogues("test")[3]
    assert [(u.msg.speaker_id, u.msg.text) for u in utts] == [(r.speaker, r.text) for r in rows]
    assert all(u.msg.is_final for u in utts)
    assert [u.msg.conversation_id for u in utts[:1]] == ["test/dia0"]
    assert any(m.topic == "/image/compressed" for m in msgs)
    stamps = [m.timestamp for m in msgs]
    assert stamps == sorted(stamps)  # one time line
    labels = load_labels(bag)
    assert labels["test/dia0/utt0"] == rows[0].emotion and len(labels) == len(rows)


def test_timeline_is_ordered_and_dialogues_do_not_overlap():
    t = timeline({d: dialogues("test")[d] for d in range(6)}, "test")
    for a, b in zip(t, t[1:]):
        assert b.start >= a.start and a.end > a.start
        if a.conversation_id != b.conversation_id:
            assert b.start > max(u.end for u in t if u.conversation_id == a.conversation_id)


def test_corrupt_or_missing_bag_is_a_clear_error(tmp_path):
    bag = write_meld_bag(tmp_path / "b", "test", [0])
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:100])
    with pytest.raises(BagError, match="cannot read bag"):
        list(read_bag(bag))
    with pytest.raises(BagError, match="cannot read bag"):
        list(read_bag(tmp_path / "nothing"))


def test_asr_noise_changes_the_transcripts_but_not_the_labels(tmp_path):
    bag = write_meld_bag(tmp_path / "noisy", "test", [0, 1, 2], asr_wer=0.3, seed=1)
    side = json.loads((tmp_path / "noisy.labels.json").read_text())
    changed = [v for v in side["utterances"].values() if v["asr_text"] != v["text"]]
    assert changed and side["asr_wer"] == 0.3
    texts = [m.msg.text for m in read_bag(bag) if m.topic == "/utterance"]
    assert texts == [v["asr_text"] for v in side["utterances"].values()]


def test_replay_answers_each_final_utterance_once_and_matches_the_offline_evaluator(tmp_path, tiny_text_checkpoint):
    bag = write_meld_bag(tmp_path / "r", "test", [0, 1, 2], frames="synthetic", fps=3)
    result = replay(bag, {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}, speed=40.0)
    labels = load_labels(bag)
    score = result.score(labels)
    assert score["utterances"] == len(labels) == score["answered"] and score["unanswered"] == 0
    assert score["duplicates"] == 0
    offline = offline_predictions(bag, EmotionRecognizer.from_checkpoint(tiny_text_checkpoint,
                                                                          load_caption_embedder=False))
    assert {k: result.prediction(k).top_label for k in result.finals} == offline
    from ddvlm_core.labels import LABELS, label_id
    from ddvlm_core.metrics import metrics

    keys = list(offline)
    expected = metrics([label_id(labels[k]) for k in keys], [LABELS.index(offline[k]) for k in keys])
    assert {k: score[k] for k in expected} == expected


def test_committed_sample_bag_replays_through_the_default_checkpoint():
    """What `make demo` runs, in the suite, under simulated time at 50x."""
    from pathlib import Path

    from ddvlm_core.cli import DEFAULT_CHECKPOINT

    bag = Path(__file__).resolve().parents[1] / "data" / "sample_bag"
    assert sum(p.stat().st_size for p in bag.iterdir()) < 5 * 2**20
    result = replay(bag, {"model_dir": str(DEFAULT_CHECKPOINT), "input_timeout_s": 0.0}, speed=50.0)
    score = result.score(load_labels(bag))
    assert score["utterances"] == 38 and score["unanswered"] == 0 and score["duplicates"] == 0
    assert 0 <= score["wa_f1"] <= 100 and score["latency_ms"]["p50"] > 0
