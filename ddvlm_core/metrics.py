"""Metrics of the paper (Section 4.1): WA-F1 (sklearn average="weighted"), plus macro F1, accuracy,
per-class F1 and the confusion matrix (also drawn as a PNG). Shared by training and the bag replay."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ddvlm_core.labels import LABELS, NUM_LABELS


def metrics(y_true, y_pred) -> dict:
    """All numbers in percent except the confusion counts; labels fixed to the 7 MELD classes."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(NUM_LABELS))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "n": int(len(y_true)),
        "wa_f1": 100 * float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": 100 * float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": 100 * float(accuracy_score(y_true, y_pred)),
        "per_class_f1": {name: 100 * float(f) for name, f in zip(LABELS, per_class)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


BOOTSTRAP_RESAMPLES = 2000
MIN_CLUSTERS = 10  # fewer groups than this give no cluster interval worth the name: utterances are resampled


def weighted_f1_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """WA-F1 in percent of each confusion matrix (..., C, C) (rows gold, columns predicted): per-class F1
    2 TP / (2 TP + FP + FN) weighted by the class's support, as sklearn's ``average="weighted"`` (0 for a class
    neither gold nor predicted)."""
    tp = np.diagonal(confusions, axis1=-2, axis2=-1)
    support, predicted = confusions.sum(-1), confusions.sum(-2)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    total = support.sum(-1)
    return 100 * np.divide((f1 * support).sum(-1), total, out=np.zeros(total.shape), where=total > 0)


def resampled_wa_f1(y_true, predictions: list, groups=None, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
                    ) -> tuple[np.ndarray, str, int]:
    """WA-F1 of each of ``predictions`` (lists of label ids for the same utterances) on ``resamples`` bootstrap
    resamples, the same resamples for all: (scores (len(predictions), resamples), "group"|"utterance", units).

    Utterances of one dialogue share its context, speakers and topic, so they are not independent: with
    ``groups`` (a dialogue, conversation or session id per utterance) and at least MIN_CLUSTERS of them, whole
    groups are drawn with replacement (a cluster bootstrap), else single utterances. Seeded: the same inputs
    give the same resamples."""
    y_true = np.asarray(y_true, dtype=int)
    predictions = [np.asarray(p, dtype=int) for p in predictions]
    if any(len(p) != len(y_true) for p in predictions) or (groups is not None and len(groups) != len(y_true)):
        raise ValueError(f"gold, predictions and groups differ in length: {len(y_true)}, "
                         f"{[len(p) for p in predictions]}, {None if groups is None else len(groups)}")
    if not len(y_true) or resamples < 1:
        raise ValueError(f"a bootstrap needs utterances and resamples >= 1 (got {len(y_true)}, {resamples})")
    _, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True) if groups is not None else (None, None)
    clustered = unit_of is not None and unit_of.max() + 1 >= MIN_CLUSTERS
    unit_of = unit_of if clustered else np.arange(len(y_true))
    units = int(unit_of.max()) + 1
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, units, units), minlength=units) for _ in range(resamples)])
    scores = []
    for y_pred in predictions:
        per_unit = np.zeros((units, NUM_LABELS * NUM_LABELS))  # each unit's confusion counts, flattened
        np.add.at(per_unit, (unit_of, y_true * NUM_LABELS + y_pred), 1)
        scores.append(weighted_f1_of_confusions((draws @ per_unit).reshape(resamples, NUM_LABELS, NUM_LABELS)))
    return np.stack(scores), "group" if clustered else "utterance", units


def percentile_interval(scores: np.ndarray, level: float, unit: str, units: int) -> dict:
    """The central ``level`` share of resampled ``scores`` (percentiles), with what was resampled."""
    if not 0 < level < 1:
        raise ValueError(f"0 < level < 1 needed, got {level}")
    low, high = np.percentile(scores, [50 * (1 - level), 50 * (1 + level)])
    return {"low": float(low), "high": float(high), "level": level, "resamples": len(scores), "unit": unit,
            "units": units}


def bootstrap_wa_f1(y_true, y_pred, groups=None, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                    seed: int = 0) -> dict:
    """The percentile interval of WA-F1 at ``level`` over ``resamples`` bootstrap resamples (``resampled_wa_f1``:
    whole groups when ``groups`` has MIN_CLUSTERS or more). Returns {"low", "high", "level", "resamples",
    "unit": "group"|"utterance", "units": how many}."""
    scores, unit, units = resampled_wa_f1(y_true, [y_pred], groups, resamples, seed)
    return percentile_interval(scores[0], level, unit, units)


def bootstrap_wa_f1_difference(y_true, pred_a, pred_b, groups=None, resamples: int = BOOTSTRAP_RESAMPLES,
                               level: float = 0.95, seed: int = 0) -> dict:
    """WA-F1 of ``pred_b`` minus that of ``pred_a`` on the same utterances, with the percentile interval of that
    difference over paired resamples (both scored on each resample: ``resampled_wa_f1``). A paired interval is
    narrower than the two intervals side by side, as the dialogues that are hard for one are hard for the other.
    ``pred_a`` and ``pred_b`` may each be several runs (seeds; a list of prediction lists, paired in order): the
    difference is then the mean over the pairs, on each resample too (the test sample's uncertainty of a mean over
    seeds, the seeds as they ran). Returns bootstrap_wa_f1's keys plus "difference", "share_above_0" (of the
    resampled differences) and "pairs"."""
    runs_a, runs_b = (np.atleast_2d(np.asarray(p, dtype=int)) for p in (pred_a, pred_b))
    if len(runs_a) != len(runs_b):
        raise ValueError(f"{len(runs_a)} runs against {len(runs_b)}: the runs must pair up")
    scores, unit, units = resampled_wa_f1(y_true, [*runs_a, *runs_b], groups, resamples, seed)
    pairs = len(runs_a)
    point = np.mean([metrics(y_true, b)["wa_f1"] - metrics(y_true, a)["wa_f1"] for a, b in zip(runs_a, runs_b)])
    differences = (scores[pairs:] - scores[:pairs]).mean(0)
    return {"difference": float(point), **percentile_interval(differences, level, unit, units),
            "share_above_0": float((differences > 0).mean()), "pairs": pairs}


def interval_words(interval: dict, groups: str) -> str:
    """A ``bootstrap_wa_f1`` interval in words: its level, its bounds and what was resampled (``groups``: what its
    groups are, e.g. "dialogues")."""
    resampled = (f"its {interval['units']} {groups}" if interval["unit"] == "group" else
                 f"its {interval['units']} utterances, as it has fewer than {MIN_CLUSTERS} {groups}")
    return (f"{100 * interval['level']:g} % interval {interval['low']:.2f} to {interval['high']:.2f}, bootstrap over "
            f"{resampled}")


def class_f1_lines(per_class_f1: dict[str, float]) -> list[str]:
    """A report's per-class F1 as Markdown table lines."""
    return ["| class | F1 |", "|---|---|"] + [f"| {name} | {f1:.2f} |" for name, f1 in per_class_f1.items()]


def per_flag(flags: list[list[str]], gold: list[int], pred: list[int]) -> dict[str, dict]:
    """Per flag carried by a scored answer (``flags[i]``: the answer to utterance i), most often first: how many
    answers carry it, their accuracy and the accuracy of the answers without it (percent; None where there are none):
    whether the answers a flag marks are worth less."""
    from collections import Counter

    def accuracy(picked: list[int]) -> float | None:
        return 100.0 * sum(gold[i] == pred[i] for i in picked) / len(picked) if picked else None

    out = {}
    for flag, n in sorted(Counter(f for answer in flags for f in set(answer)).items(), key=lambda kv: (-kv[1], kv[0])):
        out[flag] = {"n": n, "accuracy": accuracy([i for i, answer in enumerate(flags) if flag in answer]),
                     "accuracy_others": accuracy([i for i, answer in enumerate(flags) if flag not in answer])}
    return out


def flag_lines(flagged: dict[str, dict]) -> list[str]:
    """``per_flag`` as Markdown table lines ([] when no answer carries a flag)."""
    if not flagged:
        return []
    return ["| flag (README, Flags) | answers | accuracy | accuracy of the others |", "|---|---|---|---|"] + [
        f"| `{flag}` | {r['n']} | {r['accuracy']:.1f} | "
        f"{'—' if r['accuracy_others'] is None else format(r['accuracy_others'], '.1f')} |"
        for flag, r in flagged.items()]


def confusion_lines(confusion: list[list[int]], image: str = "") -> list[str]:
    """A report's confusion counts as a Markdown code block, and the drawn matrix (``confusion_png``) when given."""
    lines = ["Confusion (rows gold, columns predicted, order " + ", ".join(LABELS) + "):", "", "```"]
    lines += [" ".join(f"{v:5d}" for v in row) for row in confusion] + ["```"]
    return lines + (["", f"![confusion matrix, rows normalised]({image})"] if image else [])


def confusion_png(confusion: list[list[int]], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix as a heat map with counts (rows: gold, columns: predicted)."""
    import cv2

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    cell, left, top = 70, 90, 60
    img = np.full((top + cell * NUM_LABELS + 20, left + cell * NUM_LABELS + 20, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i in range(NUM_LABELS):
        for j in range(NUM_LABELS):
            shade = int(255 * (1 - norm[i, j]))
            x, y = left + j * cell, top + i * cell
            cv2.rectangle(img, (x, y), (x + cell - 2, y + cell - 2), (255, shade, shade), -1)
            colour = (255, 255, 255) if norm[i, j] > 0.5 else (0, 0, 0)
            cv2.putText(img, str(int(cm[i, j])), (x + 8, y + 40), font, 0.5, colour, 1, cv2.LINE_AA)
        cv2.putText(img, LABELS[i][:8], (4, top + i * cell + 40), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, LABELS[i][:7], (left + i * cell + 2, top - 10), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title[:70], (4, 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
