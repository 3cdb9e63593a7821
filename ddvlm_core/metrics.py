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


def bootstrap_wa_f1(y_true, y_pred, groups=None, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                    seed: int = 0) -> dict:
    """The percentile interval of WA-F1 at ``level`` over ``resamples`` bootstrap resamples of the utterances.

    Utterances of one dialogue share its context, speakers and topic, so they are not independent: with
    ``groups`` (a dialogue, conversation or session id per utterance) and at least MIN_CLUSTERS of them, whole
    groups are drawn with replacement (a cluster bootstrap), else single utterances. Seeded: the same inputs
    give the same interval. Returns {"low", "high", "level", "resamples", "unit": "group"|"utterance",
    "units": how many}."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) != len(y_pred) or (groups is not None and len(groups) != len(y_true)):
        raise ValueError(f"gold, predictions and groups differ in length: {len(y_true)}, {len(y_pred)}, "
                         f"{None if groups is None else len(groups)}")
    if not len(y_true) or not 0 < level < 1 or resamples < 1:
        raise ValueError(f"a bootstrap needs utterances, 0 < level < 1 and resamples >= 1 (got {len(y_true)}, "
                         f"{level}, {resamples})")
    _, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True) if groups is not None else (None, None)
    clustered = unit_of is not None and unit_of.max() + 1 >= MIN_CLUSTERS
    unit_of = unit_of if clustered else np.arange(len(y_true))
    units = int(unit_of.max()) + 1
    per_unit = np.zeros((units, NUM_LABELS * NUM_LABELS))  # each unit's confusion counts, flattened
    np.add.at(per_unit, (unit_of, y_true * NUM_LABELS + y_pred), 1)
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, units, units), minlength=units) for _ in range(resamples)])
    scores = weighted_f1_of_confusions((draws @ per_unit).reshape(resamples, NUM_LABELS, NUM_LABELS))
    low, high = np.percentile(scores, [50 * (1 - level), 50 * (1 + level)])
    return {"low": float(low), "high": float(high), "level": level, "resamples": resamples,
            "unit": "group" if clustered else "utterance", "units": units}


def interval_words(interval: dict, groups: str) -> str:
    """A ``bootstrap_wa_f1`` interval in words: its level, its bounds and what was resampled (``groups``: what its
    groups are, e.g. "dialogues")."""
    resampled = (f"its {interval['units']} {groups}" if interval["unit"] == "group" else
                 f"its {interval['units']} utterances, as it has fewer than {MIN_CLUSTERS} {groups}")
    return (f"{100 * interval['level']:g} % interval {interval['low']:.2f}-{interval['high']:.2f}, bootstrap over "
            f"{resampled}")


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
