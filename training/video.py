"""MELD.Raw clips: paths, a uniform frame sampler, and a manifest check of every clip.

MELD.Raw layout: ``train_splits/dia{D}_utt{U}.mp4``, ``dev_splits_complete/…``,
``output_repeated_splits_test/…``. Known problems (a missing train clip, test clips minutes too long,
unreadable files) are found by ``manifest`` and listed; a broken clip is skipped, never a crash and never
dropped silently. The test folder also holds about 130 clips named ``final_videos_testdia{D}_utt{U}.mp4``,
re-cut twins of clips whose plain-named file is among the ones minutes too long: where the plain clip fails the
check, its twin is checked and used if it passes.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ddvlm_core.meld import MeldUtterance, parse_time

SPLIT_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
DURATION_TOLERANCE_S = 2.0


TEST_TWIN_PREFIX = "final_videos_test"  # MELD.Raw's re-cut test clips: final_videos_testdia{D}_utt{U}.mp4


def clip_paths(root: str | Path | None, split: str, dialogue_id: int, utterance_id: int) -> list[Path]:
    """The utterance's clip files that exist: ``dia{D}_utt{U}.mp4``, then (test split) its re-cut twin."""
    if root is None:
        return []
    name = f"dia{dialogue_id}_utt{utterance_id}.mp4"
    names = [name, TEST_TWIN_PREFIX + name] if split == "test" else [name]
    folder = Path(root) / SPLIT_DIRS[split]
    return [folder / n for n in names if (folder / n).is_file()]


@contextmanager
def opened(path: str | Path):
    """An OpenCV capture of the clip, released afterwards."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        yield cap
    finally:
        cap.release()


def read_clip_frames(path: str | Path, n: int) -> list[np.ndarray]:
    """n frames sampled uniformly over the clip, RGB uint8; ValueError for an unreadable clip."""
    with opened(path) as cap:
        return sampled_frames(cap, path, n)


def sampled_frames(cap, path: str | Path, n: int) -> list[np.ndarray]:
    import cv2

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


def duration_of(cap, path: str | Path) -> float:
    import cv2

    fps, total = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    if not cap.isOpened() or fps <= 0 or total <= 0:
        raise ValueError(f"{path}: not a readable video")
    return total / fps


def error_text(error: Exception) -> str:
    """An exception as a record's one-line detail: its type and message, at most 300 characters."""
    return f"{type(error).__name__}: {error}"[:300]


@dataclass(frozen=True)
class ClipStatus:
    key: str
    status: str  # ok | missing | unreadable | duration_mismatch
    detail: str = ""


def check_clip(root: str | Path, u: MeldUtterance, frames: int = 0) -> tuple[ClipStatus, list[np.ndarray]]:
    """The utterance's clip opened once: present, readable, as long as the CSV's End - Start (within
    ``DURATION_TOLERANCE_S``), and when it passes and ``frames`` > 0, that many frames sampled uniformly.
    A clip that fails, or whose frames cannot be decoded, gets its status and no frames. In the test split a
    failing clip's re-cut twin (``clip_paths``) is checked next; the status names the twin when it is used, and
    every file tried when none passes."""
    paths = clip_paths(root, u.split, u.dialogue_id, u.utterance_id)
    if not paths:
        return ClipStatus(u.key, "missing"), []
    failures = []
    for path in paths:
        status, images = _check_file(path, u, frames)
        if status.status == "ok":
            if not path.name.startswith(TEST_TWIN_PREFIX):
                return status, images
            return ClipStatus(u.key, "ok", path.name + (f", not {_tried(failures)}" if failures else "")), images
        failures.append((path, status))
    if len(failures) == 1:
        return failures[0][1], []
    return ClipStatus(u.key, failures[0][1].status, _tried(failures)), []


def _tried(failures: list[tuple[Path, ClipStatus]]) -> str:
    return "; ".join(f"{path.name}: {status.status} ({status.detail})" for path, status in failures)


def _check_file(path: Path, u: MeldUtterance, frames: int) -> tuple[ClipStatus, list[np.ndarray]]:
    with opened(path) as cap:
        try:
            duration = duration_of(cap, path)
        except ValueError as e:
            return ClipStatus(u.key, "unreadable", str(e)), []
        expected = parse_time(u.end) - parse_time(u.start)
        if abs(duration - expected) > DURATION_TOLERANCE_S:
            return ClipStatus(u.key, "duration_mismatch", f"clip {duration:.1f}s, CSV {expected:.1f}s"), []
        try:
            return ClipStatus(u.key, "ok"), sampled_frames(cap, path, frames) if frames > 0 else []
        except Exception as e:  # noqa: BLE001 - ValueError, or OpenCV's own error on a damaged stream
            return ClipStatus(u.key, "unreadable", error_text(e)), []


def manifest(root: str | Path, utterances: list[MeldUtterance]) -> list[ClipStatus]:
    """Check each utterance's clip: present, readable, duration within tolerance of End - Start."""
    return [check_clip(root, u)[0] for u in utterances]


def manifest_report(statuses: list[ClipStatus]) -> dict:
    """Counts per status and every problem clip, for the run report."""
    return {"counts": dict(Counter(s.status for s in statuses)),
            "problems": [asdict(s) for s in statuses if s.status != "ok"]}
