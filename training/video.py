"""MELD.Raw clips: paths, a uniform frame sampler, and a manifest check of every clip.

MELD.Raw layout: ``train_splits/dia{D}_utt{U}.mp4``, ``dev_splits_complete/…``,
``output_repeated_splits_test/…``. Known problems (a missing train clip, test clips minutes too long,
unreadable files) are found by ``manifest`` and listed; a broken clip is skipped, never a crash and never
dropped silently.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ddvlm_core.meld import MeldUtterance, parse_time

SPLIT_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
DURATION_TOLERANCE_S = 2.0


def clip_path(root: str | Path | None, split: str, dialogue_id: int, utterance_id: int) -> Path | None:
    if root is None:
        return None
    path = Path(root) / SPLIT_DIRS[split] / f"dia{dialogue_id}_utt{utterance_id}.mp4"
    return path if path.is_file() else None


def read_clip_frames(path: str | Path, n: int) -> list[np.ndarray]:
    """n frames sampled uniformly over the clip, RGB uint8; ValueError for an unreadable clip."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not cap.isOpened() or total <= 0:
            raise ValueError(f"{path}: not a readable video")
        frames = []
        for index in np.linspace(0, total - 1, min(n, total)).round().astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = cap.read()
            if ok:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if not frames:
            raise ValueError(f"{path}: no frame could be decoded")
        return frames
    finally:
        cap.release()


def clip_duration(path: str | Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        fps, total = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if not cap.isOpened() or fps <= 0 or total <= 0:
            raise ValueError(f"{path}: not a readable video")
        return total / fps
    finally:
        cap.release()


@dataclass(frozen=True)
class ClipStatus:
    key: str
    status: str  # ok | missing | unreadable | duration_mismatch
    detail: str = ""


def manifest(root: str | Path, utterances: list[MeldUtterance]) -> list[ClipStatus]:
    """Check each utterance's clip: present, readable, duration within tolerance of End - Start."""
    out = []
    for u in utterances:
        path = clip_path(root, u.split, u.dialogue_id, u.utterance_id)
        if path is None:
            out.append(ClipStatus(u.key, "missing"))
            continue
        try:
            duration = clip_duration(path)
        except ValueError as e:
            out.append(ClipStatus(u.key, "unreadable", str(e)))
            continue
        expected = parse_time(u.end) - parse_time(u.start)
        if abs(duration - expected) > DURATION_TOLERANCE_S:
            out.append(ClipStatus(u.key, "duration_mismatch", f"clip {duration:.1f}s, CSV {expected:.1f}s"))
        else:
            out.append(ClipStatus(u.key, "ok"))
    return out


def manifest_report(statuses: list[ClipStatus]) -> dict:
    """Counts per status and every problem clip, for the run report."""
    return {"counts": dict(Counter(s.status for s in statuses)),
            "problems": [asdict(s) for s in statuses if s.status != "ok"]}
