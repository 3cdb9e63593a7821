"""ddvlm_core.metrics: WA-F1 from confusion counts as sklearn computes it, and its bootstrap interval over
dialogues (known answers)."""
import numpy as np
import pytest

from ddvlm_core.metrics import MIN_CLUSTERS, bootstrap_wa_f1, metrics, weighted_f1_of_confusions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wa_f1_from_confusion_counts_is_sklearns_weighted_f1(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 6, 300)  # class 6 never gold; predicted sometimes
    pred = np.where(rng.random(300) < 0.5, gold, rng.integers(0, 7, 300))
    m = metrics(gold, pred)
    assert weighted_f1_of_confusions(np.array(m["confusion"])) == pytest.approx(m["wa_f1"], abs=1e-9)
    batch = weighted_f1_of_confusions(np.stack([np.array(m["confusion"])] * 2))
    assert batch.shape == (2,) and batch == pytest.approx([m["wa_f1"]] * 2)
    assert weighted_f1_of_confusions(np.zeros((7, 7))) == 0.0


def test_perfect_answers_have_a_zero_width_interval_at_100():
    gold = np.arange(70) % 7
    interval = bootstrap_wa_f1(gold, gold, groups=np.arange(70) // 5)
    assert (interval["low"], interval["high"]) == (100.0, 100.0)
    assert interval["unit"] == "group" and interval["units"] == 14 and interval["level"] == 0.95


def test_dialogues_are_resampled_whole():
    """12 dialogues with the same answers: every resample of whole dialogues has the same WA-F1 (a zero-width
    interval at it); resampling single utterances varies it."""
    gold = np.tile([0, 0, 1, 2, 4, 6], 12)
    pred = np.tile([0, 1, 1, 2, 0, 6], 12)
    dialogue = np.repeat(np.arange(12), 6)
    whole = bootstrap_wa_f1(gold, pred, dialogue)
    assert whole["low"] == pytest.approx(metrics(gold, pred)["wa_f1"]) == pytest.approx(whole["high"])
    single = bootstrap_wa_f1(gold, pred)
    assert single["unit"] == "utterance" and single["units"] == 72 and single["high"] - single["low"] > 10


def test_too_few_dialogues_resample_utterances_and_the_seed_fixes_the_interval():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 7, 400)
    pred = np.where(rng.random(400) < 0.6, gold, rng.integers(0, 7, 400))
    few = bootstrap_wa_f1(gold, pred, [f"d{i % (MIN_CLUSTERS - 1)}" for i in range(400)])
    assert few["unit"] == "utterance" and few["units"] == 400
    many = bootstrap_wa_f1(gold, pred, [f"d{i % 40}" for i in range(400)], resamples=500, level=0.9)
    assert many["unit"] == "group" and many["units"] == 40 and many["resamples"] == 500
    assert many == bootstrap_wa_f1(gold, pred, [f"d{i % 40}" for i in range(400)], resamples=500, level=0.9)
    assert many["low"] < metrics(gold, pred)["wa_f1"] < many["high"]
    wider = bootstrap_wa_f1(gold, pred, [f"d{i % 40}" for i in range(400)], resamples=500, level=0.99)
    assert wider["low"] < many["low"] and wider["high"] > many["high"]


@pytest.mark.parametrize("args, match", [(([0, 1], [0]), "differ in length"),
                                         (([0, 1], [0, 1], ["a"]), "differ in length"),
                                         (([], []), "needs utterances"),
                                         (([0], [0], None, 100, 1.0), "0 < level < 1")])
def test_bad_inputs_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_wa_f1(*args)


def test_the_readme_quotes_the_committed_meld_test_replays_interval():
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    score = json.loads((repo / "reports" / "replay_meld_test.json").read_text())["score"]
    interval = score["wa_f1_interval"]
    assert interval["unit"] == "group" and interval["units"] == 280 and interval["resamples"] == 2000
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"on MELD test's 280 dialogues WA-F1 {score['wa_f1']:.2f} has the interval {interval['low']:.2f} to "
            f"{interval['high']:.2f}") in readme


def test_the_readme_quotes_the_committed_ros4hri_replay_of_meld_test_which_scores_as_its_utterance_bag():
    """reports/replay_meld_test_ros4hri (MELD test as ROS4HRI voices, one conversation whose contexts the dialogues'
    silences separate) against reports/replay_meld_test (each dialogue its own conversation on /utterance)."""
    import json
    from pathlib import Path

    from ddvlm_core.metrics import interval_words
    from ddvlm_ros.bag import ROS4HRI_GAP_S

    repo = Path(__file__).resolve().parents[1]
    voices, utterances = (json.loads((repo / "reports" / f"{name}.json").read_text())
                          for name in ("replay_meld_test_ros4hri", "replay_meld_test"))
    assert voices["params"]["ros4hri"] is True and voices["speed"] == 1000.0
    score = voices["score"]
    assert score["answered"] == score["n"] == utterances["score"]["n"] == 2610
    for metric in ("wa_f1", "macro_f1", "accuracy", "confusion"):
        assert score[metric] == utterances["score"][metric]
    interval = score["wa_f1_interval"]
    assert interval["unit"] == "group" and interval["units"] == 280 == int(voices["node"]["conversations_reset"]) + 1
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"the dialogues {ROS4HRI_GAP_S:g} s apart" in readme and f"answers all {score['n']:,} utterances and "
            f"scores WA-F1 {score['wa_f1']:.2f} ({interval_words(interval, 'conversations')}), macro F1 "
            f"{score['macro_f1']:.2f}, accuracy {score['accuracy']:.2f}, as its `Utterance` bag does "
            f"(`reports/replay_meld_test_ros4hri.md`; {voices['node']['conversations_reset']} new contexts)") in readme
    published = int(voices["node"]["published"])
    mirrored = f"ROS4HRI: each of the {published} answers to voices was mirrored as hri_msgs/Expression"
    assert mirrored in (repo / "reports" / "replay_meld_test_ros4hri.md").read_text()
    assert f"and each of its {published:,} answers to voices (revised ones included) is mirrored" in readme


def test_the_defaults_test_interval_is_recomputed_from_its_committed_predictions_and_quoted():
    """reports/default_checkpoint_test.json (python -m training.evaluate checkpoints/default --splits test): its
    predictions in MELD test's dialogue order give its WA-F1 and its interval again."""
    import json
    from pathlib import Path

    from ddvlm_core.meld import dialogues

    repo = Path(__file__).resolve().parents[1]
    test = json.loads((repo / "reports" / "default_checkpoint_test.json").read_text())["splits"]["test"]
    rows = [u for _, said in sorted(dialogues("test").items()) for u in said]
    gold, dialogue = [u.label for u in rows], [u.dialogue_id for u in rows]
    assert metrics(gold, test["predictions"])["wa_f1"] == test["wa_f1"]
    assert bootstrap_wa_f1(gold, test["predictions"], dialogue) == test["wa_f1_interval"]
    interval = test["wa_f1_interval"]
    readme = " ".join((repo / "README.md").read_text().split())
    assert f"**test {test['wa_f1']:.2f}**" in readme
    assert (f"Its test WA-F1 has the 95 % interval {interval['low']:.2f} to {interval['high']:.2f} over MELD test's "
            f"{interval['units']} dialogues") in readme
    assert f"**Test WA-F1 {test['wa_f1']:.2f}**" in (repo / "MODEL_CARD.md").read_text()


def test_the_paired_difference_of_identical_answers_is_zero_and_of_better_answers_above_zero():
    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    rng = np.random.default_rng(5)
    gold = rng.integers(0, 7, 600)
    a = np.where(rng.random(600) < 0.5, gold, rng.integers(0, 7, 600))
    dialogue = np.arange(600) // 6  # 100 dialogues
    same = bootstrap_wa_f1_difference(gold, a, a, dialogue)
    assert (same["difference"], same["low"], same["high"], same["share_above_0"]) == (0.0, 0.0, 0.0, 0.0)
    b = a.copy()
    b[:60] = gold[:60]  # b answers the first 10 dialogues right, a as a does elsewhere
    better = bootstrap_wa_f1_difference(gold, a, b, dialogue)
    assert better["difference"] == pytest.approx(metrics(gold, b)["wa_f1"] - metrics(gold, a)["wa_f1"])
    assert 0 < better["low"] < better["difference"] < better["high"] and better["unit"] == "group"
    assert better["share_above_0"] > 0.95
    reverse = bootstrap_wa_f1_difference(gold, b, a, dialogue)
    assert (reverse["difference"], reverse["low"], reverse["high"]) == pytest.approx(
        (-better["difference"], -better["high"], -better["low"]))
    # paired: narrower than either score's own interval
    for answers in (a, b):
        alone = bootstrap_wa_f1(gold, answers, dialogue)
        assert better["high"] - better["low"] < alone["high"] - alone["low"]


def test_the_difference_of_several_seeds_is_their_mean_on_the_same_resamples():
    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    rng = np.random.default_rng(9)
    gold = rng.integers(0, 7, 300)
    a, b = (np.where(rng.random(300) < share, gold, rng.integers(0, 7, 300)) for share in (0.5, 0.6))
    dialogue = np.arange(300) // 10
    one = bootstrap_wa_f1_difference(gold, a, b, dialogue)
    twice = bootstrap_wa_f1_difference(gold, [a, a], [b, b], dialogue)
    assert {**twice, "pairs": 1} == pytest.approx(one) and twice["pairs"] == 2
    crossed = bootstrap_wa_f1_difference(gold, [a, b], [b, a], dialogue)
    assert (crossed["difference"], crossed["low"], crossed["high"]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    with pytest.raises(ValueError, match="the runs must pair up"):
        bootstrap_wa_f1_difference(gold, [a, a], [b], dialogue)


def test_the_readme_quotes_the_committed_replays_confidence_thresholds():
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rows = {r["threshold"]: r for r in json.loads((repo / "reports" / "replay_meld_test.json").read_text())
            ["score"]["calibration"]["coverage"]}
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"acts only on answers of confidence 0.7 or more acts on {rows[0.7]['share']:.1f} % of the utterances and "
            f"is right {rows[0.7]['accuracy']:.1f} % of the time (0.5 or more: {rows[0.5]['share']:.1f} % and "
            f"{rows[0.5]['accuracy']:.1f} %; 0.8: {rows[0.8]['share']:.1f} % and {rows[0.8]['accuracy']:.1f} %); no "
            "answer reaches 0.9") in readme and rows[0.9]["n"] == 0


def test_per_flag_gives_the_accuracy_of_the_answers_a_flag_marks_and_of_the_others():
    from ddvlm_core.metrics import flag_lines, per_flag

    flags = [["a"], ["a", "b"], [], ["b"], ["a", "a"], []]
    gold, pred = [0, 1, 2, 3, 4, 5], [0, 0, 2, 3, 4, 0]  # right: 0, 2, 3, 4
    assert per_flag(flags, gold, pred) == {"a": {"n": 3, "accuracy": 200 / 3, "accuracy_others": 200 / 3},
                                           "b": {"n": 2, "accuracy": 50.0, "accuracy_others": 75.0}}
    assert per_flag([["c"]], [1], [1]) == {"c": {"n": 1, "accuracy": 100.0, "accuracy_others": None}}
    assert flag_lines(per_flag([["c"]], [1], [1]))[2] == "| `c` | 1 | 100.0 | — |" and flag_lines({}) == []


def test_the_readme_quotes_what_the_low_confidence_flag_marks_from_the_asr_noise_report():
    """reports/replay_asr_noise.json (python bench/asr_noise.py): the misheard share and the two accuracies the README
    gives for 10, 20 and 30 % WER."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rows = {r["target_wer"]: r for r in json.loads((repo / "reports" / "replay_asr_noise.json").read_text())["rows"]
            if r["punctuation"]}
    readme = " ".join((repo / "README.md").read_text().split())
    r10, r20, r30 = rows[0.1], rows[0.2], rows[0.3]
    assert (f"at 20 % WER, the {r20['misheard_share']:.1f} % of MELD test's utterances with half their words wrong or "
            f"more are answered right {r20['accuracy_misheard']:.1f} % of the time, the others "
            f"{r20['accuracy_heard']:.1f} % (30 % WER: {r30['misheard_share']:.1f} %, {r30['accuracy_misheard']:.1f} "
            f"% against {r30['accuracy_heard']:.1f} %)") in readme
    assert (f"(at 10 % WER the {r10['misheard_share']:.1f} % misheard are right {r10['accuracy_misheard']:.1f} % of "
            f"the time, the others {r10['accuracy_heard']:.1f} %)") in readme


def test_the_readme_quotes_what_one_speaker_for_every_turn_costs_from_the_speaker_tokens_report():
    """reports/speaker_tokens.json (python bench/speaker_tokens.py): both WA-F1s, where the README explains LoRA's
    speaker tokens and where it tells a ROS4HRI integrator that asr_vosk hears everyone as one voice."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    scores = json.loads((repo / "reports" / "speaker_tokens.json").read_text())["scores"]
    real, one = scores["real speakers"]["wa_f1"], scores["every turn one speaker"]["wa_f1"]
    readme = " ".join((repo / "README.md").read_text().split())
    assert f"the real speakers score WA-F1 {real:.2f} and every turn given to one speaker {one:.2f}" in readme
    assert f"WA-F1 {real:.2f} with MELD's speakers and {one:.2f} with every turn given to one speaker" in readme


def test_the_readme_quotes_how_many_transitions_each_executor_survived_from_the_executor_transitions_report():
    """reports/executor_transitions.json (python bench/executor_transitions.py): the MultiThreadedExecutor with rclpy's
    QoS event handlers stopped, the node as shipped kept it spinning through every transition, as the
    SingleThreadedExecutor."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    report = json.loads((repo / "reports" / "executor_transitions.json").read_text())
    before, shipped, single = report["rows"]
    assert (before["executor"], before["event_handlers"]) == ("multi_threaded", True)
    assert not before["executor_spinning"]
    assert "InvalidHandle" in before["ended_by"]
    assert shipped["executor"] == "multi_threaded" and not shipped["event_handlers"]
    assert single["executor"] == "single_threaded"
    assert all(r["executor_spinning"] and r["transitions"] == report["max_transitions"] for r in (shipped, single))
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"a MultiThreadedExecutor stopped after {before['transitions']} transitions with rclpy's handlers, and "
            f"still spins after {shipped['transitions']} with the node as shipped") in readme


def test_the_readme_quotes_what_a_camera_costs_the_node_from_the_camera_cost_report():
    """reports/camera_cost.json (python bench/camera_cost.py): the share of a core each node spends on a camera, and
    that the node without a captioner took no frame."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rows = json.loads((repo / "reports" / "camera_cost.json").read_text())["rows"]
    with_one, without = (100 * rows[k]["cpu_share_of_a_core"] for k in ("captioning", "text_only"))
    assert rows["text_only"]["frames_taken"] == 0 and rows["captioning"]["frames_taken"] > 0
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"costs a node with a captioner {with_one:.1f} % of a core (it takes every frame) and one without "
            f"{without:.1f} % (it does not subscribe the camera)") in readme
