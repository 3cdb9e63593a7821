"""MELD dialogues <-> rosbag2 bags (mcap default, sqlite3 option) with the pure-Python ``rosbags``.

A bag holds ``/utterance`` (ddvlm_msgs/Utterance, final ASR results on a real timeline from MELD's
Start/EndTime), optionally ``/image/compressed`` (sensor_msgs/CompressedImage, JPEG frames from MELD.Raw
clips when present, or small synthetic ones), and a labels side file ``<bag>.labels.json`` keyed by
conversation/utterance id. ``read_bag`` also reads bags recorded on a robot with ``ros2 bag record``
(std_msgs/String transcripts, sensor_msgs images, our types, ROS4HRI's hri_msgs).
"""
from __future__ import annotations

import json
import math
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from rosbags.rosbag2 import Reader, Writer, WriterError
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore

from ddvlm_core.asr_noise import corrupt, unpunctuate
from ddvlm_core.assets import installed, shipped
from ddvlm_core.labels import LABELS, label_id
from ddvlm_core.meld import MeldUtterance, dialogues, parse_time
from ddvlm_ros.convert import sec_to_stamp
from ddvlm_ros.params import PARAMS_BY_NAME

MSG_DIR = shipped("msg")  # the .msg files of ddvlm_msgs (also installed to share/ddvlm_ros/msg)
UTTERANCE_TOPIC, IMAGE_TOPIC = "/utterance", "/image/compressed"
UTTERANCE_TYPE, IMAGE_TYPE = "ddvlm_msgs/msg/Utterance", "sensor_msgs/msg/CompressedImage"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
FORMS = ("utterance", "ros4hri")  # what the ASR publishes: ddvlm_msgs/Utterance, or ROS4HRI voices' speech
TRACKED_TYPE, SPEECH_TYPE = "hri_msgs/msg/IdsList", "hri_msgs/msg/LiveSpeech"
ROS4HRI_CONVERSATION = PARAMS_BY_NAME["conversation_id"].default  # where the node files the voices' utterances
# between two dialogues of a ROS4HRI bag: longer than the node's idle_timeout_s, so that each starts a new context
ROS4HRI_GAP_S = PARAMS_BY_NAME["idle_timeout_s"].default + 10.0


class BagError(RuntimeError):
    """A bag that cannot be read, with the reason."""


def typestore():
    """ROS 2 Kilted types + ddvlm_msgs from msg/*.msg + ROS4HRI's hri_msgs and whisper_ros' whisper_msgs
    (``msgs_dir``), to read and write bags of a ROS4HRI robot, or one that runs whisper_ros."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = _msg_types("ddvlm_msgs", MSG_DIR)
    for package in ("hri_msgs", "whisper_msgs"):
        types |= _msg_types(package, msgs_dir(package), skip_unreadable=True)
    store.register(types)
    return store


def _msg_types(package: str, folder: Path, skip_unreadable: bool = False) -> dict:
    """The types of the .msg files in ``folder``; ``skip_unreadable``: leave out those rosbags cannot parse (a later
    hri_msgs' new message: its topics are then of an unknown type, as a robot's own packages' are); else
    TypesysError."""
    types = {}
    for path in sorted(folder.glob("*.msg")):
        try:
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{package}/msg/{path.stem}"))
        except TypesysError:
            if not skip_unreadable:
                raise
    return types


def msgs_dir(package: str) -> Path:
    """The .msg files of a package we vendor a subset of (hri_msgs, whisper_msgs): the installed package's
    (``<prefix>/share/<package>/msg``, in $AMENT_PREFIX_PATH then ``sys.prefix``: apt's, or the subset ``make``
    builds), else the subset vendored in ``third_party/<package>``."""
    return installed(package, "msg") or shipped(f"third_party/{package}/msg")


@dataclass(frozen=True)
class TimedUtterance:
    conversation_id: str
    utterance_id: str
    speaker: str
    text: str
    start: float  # seconds on the bag timeline
    end: float
    label: str


MAX_PAUSE_S = 10.0  # the longest silence inside a dialogue on a bag's timeline


def timeline(rows_by_dialogue: dict[int, list[MeldUtterance]], split: str, t0: float = 1000.0,
             gap_s: float = 3.0, max_pause_s: float = MAX_PAUSE_S) -> list[TimedUtterance]:
    """Dialogues one after another; inside a dialogue MELD's own Start/EndTime offsets.

    MELD times are sometimes out of order, overlapping or inverted; an utterance never starts before the
    previous one, and ends at least 0.2 s after its start. They also put some turns of one dialogue minutes
    apart (test dialogue 218: 20 minutes between its first two): a silence longer than ``max_pause_s`` after
    the dialogue's latest end is shortened to it, and the rest of the dialogue moved up with it. Else the node,
    replaying under ``use_sim_time``, would start a new context there (``idle_timeout_s``, 120 s), and its
    answers would come from other prompts than the ones the model is trained and evaluated on.
    """
    out, clock = [], t0
    for dia in sorted(rows_by_dialogue):
        rows = rows_by_dialogue[dia]
        first = parse_time(rows[0].start)
        last_start = latest_end = clock
        cut = 0.0  # seconds of silence taken out of this dialogue so far
        for k, r in enumerate(rows):
            start = max(clock + parse_time(r.start) - first - cut, last_start)
            if k and start - latest_end > max_pause_s:
                cut += start - latest_end - max_pause_s
                start = latest_end + max_pause_s
            end = max(clock + parse_time(r.end) - first - cut, start + 0.2)
            if end - start > 30:  # MELD test clips known to be minutes too long
                end = start + min(30.0, 0.4 * len(r.text.split()) + 1.0)
            out.append(TimedUtterance(f"{split}/dia{dia}", f"utt{r.utterance_id}", r.speaker, r.text, start, end,
                                      r.emotion))
            last_start, latest_end = start, max(latest_end, end)
        clock = max(u.end for u in out) + gap_s
    return out


def synthetic_frame(k: int, size: int = 64) -> np.ndarray:
    """A small moving-block frame (RGB) so that the camera path is exercised without MELD videos."""
    img = np.full((size, size, 3), 30, np.uint8)
    x = (k * 5) % (size - 16)
    img[16:48, x : x + 16] = (200, 160, 120)
    return img


def _stamp(store, seconds: float):
    return sec_to_stamp(seconds, store.types["builtin_interfaces/msg/Time"])


def write_meld_bag(out: str | Path, split: str = "test", dialogue_ids: list[int] | None = None,
                   storage: str = "mcap", frames: str = "none", fps: float = 5.0, clips_dir: str | Path | None = None,
                   asr_wer: float = 0.0, seed: int = 0, asr_punctuation: bool = True, form: str = "utterance"
                   ) -> Path:
    """Write MELD dialogues as a bag + labels side file. ``frames``: none | synthetic | clips. The transcripts
    are MELD's, or as an ASR would give them: ``asr_wer`` > 0 adds seeded word errors, ``asr_punctuation``
    False writes them without punctuation, in lower case (``unpunctuate``), as ASRs that do not punctuate do.
    ``form`` ros4hri: the turns as a ROS4HRI robot's voices say them (``_voices``), instead of on /utterance."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {sorted(STORAGES)}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if frames != "none" and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if frames == "clips" and (clips_dir is None or not Path(clips_dir).is_dir()):
        raise ValueError(f"frames 'clips' needs the MELD.Raw folder as clips_dir (--clips-dir), got {clips_dir!r}")
    if not 0.0 <= asr_wer <= 1.0:
        raise ValueError(f"WER must be in [0, 1], got {asr_wer}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists: the bag folder must not")
    rows = dialogues(split)
    ids = dialogue_ids if dialogue_ids is not None else sorted(rows)
    missing = [d for d in ids if d not in rows]
    if missing:
        raise ValueError(f"MELD {split} has no dialogues {missing}")
    store = typestore()
    gap = {"gap_s": ROS4HRI_GAP_S} if form == "ros4hri" else {}
    events, labels, clip_problems = _meld_events(timeline({d: rows[d] for d in ids}, split, **gap), store, frames,
                                                 fps, clips_dir, {r.key: r for d in ids for r in rows[d]}, asr_wer,
                                                 seed, asr_punctuation, form)
    made = False  # whether this call made the folder (a folder another process made meanwhile is not ours)
    try:  # every message is made before the bag folder is: only writing them can fail halfway
        with Writer(out, version=9, storage_plugin=STORAGES[storage]) as writer:
            made = True
            connections = {}
            for t, topic, msgtype, data in sorted(events, key=lambda e: e[0]):
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
                writer.write(connections[topic], round(t * 1e9), data)
    except BaseException:  # e.g. Ctrl-C, a full disk: no half-written bag is left to be mistaken for a whole one
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    side = labels_path(out)
    clips = {"clip_problems": clip_problems} if frames == "clips" else {}  # utterances without camera frames
    side.write_text(json.dumps({"split": split, "dialogues": ids, "asr_wer": asr_wer, "seed": seed,
                                "asr_punctuation": asr_punctuation, "form": form, **clips,
                                "utterances": labels}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def _meld_events(utterances: list[TimedUtterance], store, frames: str, fps: float, clips_dir,
                 by_key: dict[str, MeldUtterance], asr_wer: float, seed: int,
                 asr_punctuation: bool = True, form: str = "utterance") -> tuple[list, dict, dict]:
    """The bag's messages as (time s, topic, type, CDR bytes), the labels side file's utterance records (by the
    key of the node's answer), and the utterances whose clips gave no frames (and why)."""
    import cv2

    Utterance, Header, Compressed = (store.types[t] for t in (UTTERANCE_TYPE, "std_msgs/msg/Header", IMAGE_TYPE))
    rng = random.Random(seed)
    events, labels, clip_problems = [], {}, {}
    texts = {}
    for u in utterances:
        text = u.text if asr_punctuation else unpunctuate(u.text)
        texts[u] = text = corrupt(text, asr_wer, rng) if asr_wer else text
        if form == "utterance":
            msg = Utterance(header=Header(stamp=_stamp(store, u.end), frame_id="mic"), start=_stamp(store, u.start),
                            end=_stamp(store, u.end), conversation_id=u.conversation_id,
                            utterance_id=u.utterance_id, speaker_id=u.speaker, text=text, is_final=True,
                            confidence=0.0)
            events.append((u.end, UTTERANCE_TOPIC, UTTERANCE_TYPE, store.serialize_cdr(msg, UTTERANCE_TYPE)))
    voice_events, keys = _voices(utterances, texts, store) if form == "ros4hri" else ([], {})
    events += voice_events
    for u in utterances:
        key = f"{u.conversation_id}/{u.utterance_id}"
        labels[keys.get(key, key)] = {"label": u.label, "text": u.text, "asr_text": texts[u], "speaker": u.speaker,
                                      "start": u.start, "end": u.end} | ({"meld": key} if key in keys else {})
        if frames == "none":
            continue
        images, problem = _frames_for(u, frames, fps, clips_dir, by_key)
        if problem:
            clip_problems[key] = problem
        for t, img in images:
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])
            frame = Compressed(header=Header(stamp=_stamp(store, t), frame_id="camera"), format="jpeg",
                               data=np.frombuffer(jpg.tobytes(), np.uint8))
            events.append((t, IMAGE_TOPIC, IMAGE_TYPE, store.serialize_cdr(frame, IMAGE_TYPE)))
    return events, labels, clip_problems


def voice_id(u: TimedUtterance) -> str:
    """The ROS4HRI voice id of an utterance's speaker: one per speaker and dialogue (dia<D>_<name>), a valid topic
    name token (``ddvlm_ros.ros4hri.valid_id``)."""
    name = re.sub(r"[^a-z0-9]+", "_", u.speaker.lower()).strip("_") or "someone"
    return f"{u.conversation_id.rpartition('/')[2]}_{name}"


def _voices(utterances: list[TimedUtterance], texts: dict, store) -> tuple[list, dict[str, str]]:
    """The turns as a ROS4HRI robot hears them (REP-155): /humans/voices/tracked names a dialogue's voices from 20 ms
    before each first speaks until 1 s after the dialogue's last words; each turn is an incremental result (its first
    word) at its start and the final one at its end, stamped with it, on /humans/voices/<voice_id>/speech. A voice's
    next incremental result comes after its previous final one, and no two at once, so that the node numbers the
    turns in this order: returns the messages (time s, topic, type, CDR) and MELD key -> the node's answer key
    (``ROS4HRI_CONVERSATION``/1, /2 ...)."""
    IdsList, LiveSpeech, Header = (store.types[t] for t in (TRACKED_TYPE, SPEECH_TYPE, "std_msgs/msg/Header"))
    english = {field: tag for field, tag in (("locale", "en_US"), ("language", "en-US"))  # hri_msgs 2.1 on / 2.0
               if field in LiveSpeech.__dataclass_fields__}

    def tracked(t: float, ids: list[str]) -> tuple:
        msg = IdsList(header=Header(stamp=_stamp(store, t), frame_id=""), ids=list(ids))
        return t, "/humans/voices/tracked", TRACKED_TYPE, store.serialize_cdr(msg, TRACKED_TYPE)

    def speech(t: float, voice: str, stamp: float, incremental: str = "", final: str = "") -> tuple:
        msg = LiveSpeech(header=Header(stamp=_stamp(store, stamp), frame_id="mic"), incremental=incremental,
                         final=final, confidence=1.0, **english)
        return t, f"/humans/voices/{voice}/speech", SPEECH_TYPE, store.serialize_cdr(msg, SPEECH_TYPE)

    events, keys, done = [], {}, {}  # done: voice -> when its latest final result came
    voices, dialogue_end = [], -math.inf  # the current dialogue's voices so far, and its latest final result
    last = -math.inf  # the latest incremental result
    for k, u in enumerate(utterances):
        if k and u.conversation_id != utterances[k - 1].conversation_id and voices:  # the dialogue's people leave
            events.append(tracked(dialogue_end + 1.0, []))
            voices, dialogue_end = [], -math.inf
        words = texts[u].split()
        if not words:  # an ASR that heard nothing (every word deleted at a high --asr-noise) publishes no result
            continue
        voice = voice_id(u)
        began = last = max(u.start, done.get(voice, -math.inf) + 1e-3, last + 1e-3)
        if voice not in voices:
            voices.append(voice)
            events.append(tracked(began - 0.02, voices))
        events.append(speech(began, voice, 0.0, incremental=words[0]))
        done[voice] = max(u.end, began + 1e-3)
        dialogue_end = max(dialogue_end, done[voice])
        events.append(speech(done[voice], voice, u.end, final=texts[u]))
        keys[f"{u.conversation_id}/{u.utterance_id}"] = f"{ROS4HRI_CONVERSATION}/{len(keys) + 1}"
    if voices:
        events.append(tracked(dialogue_end + 1.0, []))
    return events, keys


def _frames_for(u: TimedUtterance, frames: str, fps: float, clips_dir, by_key: dict[str, MeldUtterance]
                ) -> tuple[list[tuple[float, np.ndarray]], str]:
    """Camera frames inside the utterance's window, and for clips the reason there are none: a clip that is
    missing, unreadable or not as long as the CSV says (``training.video.check_clip``, as captioning checks it)."""
    n = max(1, int((u.end - u.start) * fps))
    stamps = [u.start + (k + 0.5) * (u.end - u.start) / n for k in range(n)]
    if frames == "synthetic":
        return [(t, synthetic_frame(int(t * fps))) for t in stamps], ""
    if frames == "clips":
        from training.video import check_clip

        status, images = check_clip(clips_dir, by_key[f"{u.conversation_id}_{u.utterance_id}"], n)
        return list(zip(stamps, images)), "" if status.status == "ok" else status.status
    raise ValueError(f"frames must be none, synthetic or clips, got {frames!r}")


def labels_path(bag: str | Path) -> Path:
    bag = Path(bag)
    return bag.with_name(bag.name + ".labels.json")


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    timestamp: float  # seconds (record time)
    msg: object


def read_bag(path: str | Path) -> Iterator[BagMessage]:
    """Every message of a rosbag2 bag (mcap or sqlite3) in time order, deserialized."""
    store = typestore()
    try:
        with Reader(Path(path)) as reader:
            connections = list(reader.connections)
            for conn, timestamp, raw in reader.messages(connections=connections):
                try:
                    msg = store.deserialize_cdr(raw, conn.msgtype)
                except KeyError:
                    continue  # a type we do not know: not ours to replay
                yield BagMessage(conn.topic, conn.msgtype, timestamp * 1e-9, msg)
    except BagError:
        raise
    except Exception as e:  # rosbags raises several types for broken bags
        raise BagError(f"{path}: cannot read bag ({type(e).__name__}: {e})") from None


def load_labels(bag: str | Path, side_file: bool = True) -> dict[str, str]:
    """Gold labels by "conversation/utterance" key from a bag's side file (or, ``side_file=False``, from the
    JSON file ``bag`` itself): {"utterances": {key: {"label": ...}}} or simply {key: label}."""
    side = labels_path(bag) if side_file else Path(bag)
    if not side.is_file():
        raise BagError(f"{side}: labels {'side ' if side_file else ''}file missing")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        items = data["utterances"].items() if "utterances" in data else data.items()
        labels = {k: v["label"] if isinstance(v, dict) else v for k, v in items}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BagError(f"{side}: not a labels file ({type(e).__name__}: {e})") from None
    unknown = sorted({str(v) for v in labels.values() if not _is_label(v)})
    if unknown:
        raise BagError(f"{side}: labels {unknown} are not among {', '.join(LABELS)}")
    return labels


def _is_label(value) -> bool:
    try:
        label_id(value)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """python -m ddvlm_ros.bag OUT [--split test] [--dialogues 0,1,2 | all] [--storage mcap] [--frames none]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ddvlm_ros.bag", description="MELD dialogues -> rosbag2 bag")
    ap.add_argument("out", help="the bag folder to write (must not exist); labels go to OUT.labels.json")
    ap.add_argument("--split", default="test", help="MELD split: train, dev or test")
    ap.add_argument("--dialogues", default="all", help="comma-separated dialogue ids, or all")
    ap.add_argument("--storage", default="mcap", choices=sorted(STORAGES), help="rosbag2 storage format")
    ap.add_argument("--frames", default="none", choices=["none", "synthetic", "clips"],
                    help="camera frames: none, small synthetic JPEGs, or MELD.Raw clips (--clips-dir)")
    ap.add_argument("--clips-dir", help="MELD.Raw root (frames = clips)")
    ap.add_argument("--fps", type=float, default=5.0, help="camera frames per second of utterance (> 0)")
    ap.add_argument("--asr-noise", type=float, default=0.0, metavar="WER", help="corrupt transcripts at this WER")
    ap.add_argument("--asr-no-punctuation", action="store_true",
                    help="transcripts without punctuation, in lower case, as ASRs that do not punctuate give them")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated ASR errors")
    ap.add_argument("--form", default="utterance", choices=FORMS,
                    help="utterance: final results on /utterance; ros4hri: ROS4HRI voices' speech (REP-155), one "
                         f"voice per speaker and dialogue, dialogues {ROS4HRI_GAP_S:g} s apart")
    args = ap.parse_args(argv)
    try:
        ids = None if args.dialogues == "all" else [int(d) for d in args.dialogues.split(",")]
    except ValueError:
        ap.error(f"--dialogues: comma-separated dialogue ids or all, got {args.dialogues!r}")
    try:
        bag = write_meld_bag(args.out, args.split, ids, args.storage, args.frames, args.fps, args.clips_dir,
                             args.asr_noise, args.seed, not args.asr_no_punctuation, args.form)
    except (ValueError, WriterError) as e:  # a bad split or id, an existing bag
        ap.error(str(e))
    n = sum(1 for _ in read_bag(bag))
    problems = json.loads(labels_path(bag).read_text(encoding="utf-8")).get("clip_problems", {})
    print(f"wrote {bag} ({n} messages) and {labels_path(bag)}" + (
        f"; {len(problems)} utterances without camera frames (their clips are missing, unreadable or of the wrong "
        "length: clip_problems in the labels file)" if problems else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
