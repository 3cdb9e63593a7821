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
