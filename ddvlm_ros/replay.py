"""Replay a bag into the running emotion node with its timing and score what comes out on /emotion.

    python -m ddvlm_ros.replay BAG [--model-dir DIR] [--speed 5] [--live] [--report reports/replay.md]
    python -m ddvlm_ros.replay ROBOT_BAG --remap /asr/text:=transcript --remap /camera/image_raw:=image \
        [--labels gold.json | --labels annotations.csv | --labels session.eaf] [--answers answers.jsonl]

The node runs in-process on a real executor with ``use_sim_time``; the replayer publishes ``/clock``
from the bag's time line and each message at its time (divided by ``--speed``), records every
``/emotion`` message, joins them with the labels (the bag's side file, or ``--labels``: by utterance key, or an
annotator's time intervals, ``ddvlm_ros.time_labels``) and reports WA-F1, accuracy, per-class F1, the confusion
matrix, per-speaker accuracy, the latency distribution and how many utterances got no answer. An utterance's
latest answer counts: the fused (refined) one after the text one, one revised after a late transcript
(``answer-revised``) after both.

Bag topics reach the node's inputs (utterance, transcript, image, image/compressed, robot_speech, voice_activity,
robot_speaking) by name: /utterance, /transcript, /image, /image/compressed, /robot_speech, /voice_activity and
/robot_speaking by default, any other topic with ``--remap TOPIC:=INPUT`` (a bag recorded on a robot:
``--remap /speech:=robot_speech`` for what it said, ``--remap /is_speeching:=voice_activity`` for its VAD). With
``ros4hri: true`` (by default for a bag with ROS4HRI voices) the REP-155 topics the node reads play on their own names
(``ROS4HRI_TOPICS``). A bag without labels is replayed for its answers and latency only;
``--answers`` writes every utterance's answers as JSON lines (e.g. to annotate them), ``--elan`` as ELAN tiers
(``ddvlm_ros.elan``), ``--record`` a bag with the replayed messages and the /emotion answers.
"""
from __future__ import annotations

import argparse
import heapq
import importlib
import json
import math
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator, NamedTuple

import numpy as np
from rosbags.rosbag2 import Reader

from ddvlm_core.arrival_order import LATE_FLAG, REVISED_FLAG
from ddvlm_core.calibration import coverage_table
from ddvlm_core.captioner import captioner_id
from ddvlm_core.context import (LOOP_KEEP, REPETITION_LOOP_FLAG, UNPUNCTUATED_FLAG, UNPUNCTUATED_MIN_WORDS, has_text,
                                non_speech)
from ddvlm_core.labels import LABELS, label_id
from ddvlm_core.language import NOT_ENGLISH_FLAG
from ddvlm_core.metrics import (bootstrap_wa_f1, class_f1_lines, confusion_lines, confusion_png, flag_lines,
                                interval_words, metrics, per_flag)
from ddvlm_core.partial_results import PARTIAL_FLAG
from ddvlm_core.self_echo import SELF_ECHO_FLAG
from ddvlm_core.speech_timing import AsrTiming, spoken_s
from ddvlm_core.tts_markup import strip_tts_markup
from ddvlm_core.voice_activity import VoiceActivity, longest_s
from ddvlm_ros.bag import BagError, labels_path, load_labels
from ddvlm_ros.convert import stamp_to_sec, transcript_said
from ddvlm_ros.pipeline import LOW_CONFIDENCE_FLAG, ROBOT_SPEAKER
from ddvlm_ros.recorded import DefinitionError, RecordedTypes
from ddvlm_ros.ros4hri import CROPPED, EXPRESSION_NAME, LINKS, PERSONS, VOICE_LINGER_S, VOICES, mirrored, valid_id
from ddvlm_ros.spin import BackgroundSpin
from ddvlm_ros.time_labels import TimeLabelsError, label_for, load_intervals, unmatched


SPEECH_TOPIC = re.compile(r"/humans/voices/[^/]+/speech")  # a ROS4HRI voice's speech
IS_SPEAKING_TOPIC = re.compile(r"/humans/voices/[^/]+/is_speaking")  # its VAD (read with a captioner)
# REP-155 topics that the node reads with ros4hri: true, played on their own names: (pattern, type)
ROS4HRI_TOPICS = ((re.compile(r"/humans/(voices|persons|bodies|faces)/tracked"), "hri_msgs/msg/IdsList"),
                  (SPEECH_TOPIC, "hri_msgs/msg/LiveSpeech"),
                  (re.compile(r"/humans/persons/[^/]+/(voice|body|face)_id"), "std_msgs/msg/String"),
                  (re.compile(r"/humans/(bodies|faces)/[^/]+/cropped"), "sensor_msgs/msg/Image"),
                  (IS_SPEAKING_TOPIC, "std_msgs/msg/Bool"))
INPUTS = {"utterance": "ddvlm_msgs/msg/Utterance", "transcript": "std_msgs/msg/String",
          "transcription": "whisper_msgs/msg/Transcription", "image": "sensor_msgs/msg/Image",
          "image/compressed": "sensor_msgs/msg/CompressedImage", "robot_speech": "std_msgs/msg/String",
          "voice_activity": "std_msgs/msg/Bool", "robot_speaking": "std_msgs/msg/Bool"}
TRANSCRIBED = ("utterance", "transcript", "transcription")  # the inputs whose messages the node answers
CAMERA_INPUTS = ("image", "image/compressed")  # read by the node only when a captioner captions them
TIMING_INPUTS = ("voice_activity", "robot_speaking")  # as are these, which place the windows of its captions
SUBSCRIBE_WAIT_S = 5.0  # the longest wait for the node to subscribe a voice or crop it has just begun to track
SETTLED_S = 3.0  # the node idle this long after the bag's end while answers are missing: none will come (dropped)
DEFAULT_TOPICS = {"/utterance": "utterance", "/transcript": "transcript", "/whisper/transcription": "transcription",
                  "/image": "image", "/image/compressed": "image/compressed", "/robot_speech": "robot_speech",
                  "/voice_activity": "voice_activity", "/robot_speaking": "robot_speaking"}


def input_topics(in_bag: dict[str, str], remaps: dict[str, str] | None = None, ros4hri: bool = False
                 ) -> dict[str, str]:
    """Bag topic -> node input for the topics to play, from the bag's topics and their types (``bag_topics``):
    the default names, overridden by ``remaps`` (an input that is remapped no longer takes its default topic); with
    ``ros4hri``, also the bag's REP-155 topics that the node reads (``ROS4HRI_TOPICS``: voices, their speech, the
    person manager's links, body and face crops), each to its own name. BagError, naming the bag's topics, for a
    remap of a topic the bag lacks, an unknown input, a type mismatch or nothing to transcribe."""
    remaps = dict(remaps or {})
    for topic, target in remaps.items():
        if target not in INPUTS:
            raise BagError(f"--remap {topic}:={target}: the node's inputs are {', '.join(INPUTS)}")
        if topic not in in_bag:
            raise BagError(f"--remap {topic}:={target}: the bag has no topic {topic} ({_listing(in_bag)})")
    chosen = {t: i for t, i in DEFAULT_TOPICS.items() if t in in_bag and i not in remaps.values()} | remaps
    for topic, target in chosen.items():
        if in_bag[topic] != INPUTS[target]:
            raise BagError(f"{topic} is {in_bag[topic]}, but the node's input {target!r} takes {INPUTS[target]}")
    hri = {topic: msgtype for topic, msgtype in in_bag.items() if ros4hri_type(topic)}
    for topic, msgtype in hri.items() if ros4hri else ():
        if topic in remaps:
            continue
        if msgtype != ros4hri_type(topic):
            raise BagError(f"{topic} is {msgtype}, but ROS4HRI's {topic} is {ros4hri_type(topic)}")
        chosen[topic] = topic
    if not set(TRANSCRIBED) & set(chosen.values()) and not (ros4hri and any(map(is_speech, hri))):
        voices = any(map(is_speech, hri)) and not ros4hri
        raise BagError(f"nothing to transcribe in the bag ({_listing(in_bag)}): map a topic with "
                       f"--remap TOPIC:=transcript ({INPUTS['transcript']}), "
                       f"TOPIC:=utterance ({INPUTS['utterance']}) or TOPIC:=transcription ({INPUTS['transcription']})"
                       + (", or play its ROS4HRI voices (ros4hri: true)" if voices else ""))
    return chosen


def publisher_qos(node_input: str):
    """The replay's publisher QoS for a node input: depth 1 for camera frames and crops (the latest frame, as a camera
    publishes), transient-local for a person's links (latched, as hri_person_manager publishes them: the node
    subscribes them once the person is tracked, after they were published), else reliable with a deep queue."""
    from rclpy.qos import DurabilityPolicy, QoSProfile

    if node_input.rpartition("/")[2] in LINKS:
        return QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return QoSProfile(depth=1 if "image" in node_input or node_input.endswith("/cropped") else 500)


def ros4hri_type(topic: str) -> str:
    """The message type of a REP-155 topic the node reads with ros4hri: true ('' for any other topic)."""
    return next((msgtype for pattern, msgtype in ROS4HRI_TOPICS if pattern.fullmatch(topic)), "")


def is_speech(topic: str) -> bool:
    """Whether ``topic`` is a ROS4HRI voice's speech (``/humans/voices/<id>/speech``)."""
    return SPEECH_TOPIC.fullmatch(topic) is not None


def has_ros4hri_voices(in_bag: dict[str, str]) -> bool:
    """Whether the bag holds ROS4HRI voices that speak: ``/humans/voices/tracked`` and a voice's speech."""
    return f"{VOICES}/tracked" in in_bag and any(map(is_speech, in_bag))


def _listing(in_bag: dict[str, str]) -> str:
    return "topics: " + ", ".join(f"{t} ({m})" for t, m in sorted(in_bag.items())) if in_bag else "no topics"


def ros_type(msgtype: str):
    """'pkg/msg/Type' -> the rclpy message class; BagError when its package does not import."""
    pkg, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except ImportError as e:
        hint = {"hri_msgs": " (ROS4HRI's: apt's ros-$ROS_DISTRO-hri-msgs; `make` builds a subset)",
                "whisper_msgs": " (whisper_ros': build it from source; `make` builds a subset)"}.get(pkg, "")
        raise BagError(f"cannot play {msgtype}: {e}{hint}") from None


class BagIndex(NamedTuple):
    """What a bag's index says, without reading a message."""

    types: dict[str, str]  # topic -> message type
    counts: dict[str, int]  # topic -> how many messages
    start_s: float | None  # the time of the bag's first message in seconds; None for a bag without messages


def bag_topics(path: str | Path) -> BagIndex:
    """The bag's topics, their types and message counts and its start, from its index: no message is read."""
    try:
        with Reader(Path(path)) as reader:
            counts: dict[str, int] = {}
            for c in reader.connections:
                counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
            return BagIndex({c.topic: c.msgtype for c in reader.connections}, counts,
                            reader.start_time * 1e-9 if reader.message_count else None)
    except Exception as e:  # rosbags raises several types for broken bags
        raise BagError(f"{path}: cannot read bag ({type(e).__name__}: {e})") from None


def bag_messages(path: str | Path, topics: Collection[str] | None = None) -> Iterator[tuple[float, str, str, bytes]]:
    """(time s, topic, msgtype, raw CDR) of every message on ``topics`` (None: all), in time order, one at a time: a
    robot's bag of raw camera images is tens of GB, more than a machine's memory, and was read whole."""
    try:
        with Reader(Path(path)) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            if not connections:  # (rosbags reads every connection when given none)
                return
            for c, t, raw in reader.messages(connections=connections):
                yield t * 1e-9, c.topic, c.msgtype, bytes(raw)
    except Exception as e:  # rosbags raises several types for broken bags
        raise BagError(f"{path}: cannot read bag ({type(e).__name__}: {e})") from None


class NodeConfigureError(RuntimeError):
    """The node refused its parameters (e.g. no such model_dir, an unknown captioner): replay prints one line."""


@dataclass
class ReplayResult:
    answers: dict[str, dict] = field(default_factory=dict)  # key -> {"text": msg, "refined": msg, "revised": msg,
    #                                                         "latest": the latest of them}
    finals: list[str] = field(default_factory=list)  # keys of the final utterances replayed, in order
    context_turns: list[tuple[int, str, str, str]] = field(default_factory=list)  # (finals before it, key, speaker,
    #                      text) of each turn that only joins the context: the robot's (robot_speech), and the
    #                      context_only_speakers' transcripts; in answers files, as dialogues have them
    wall_s: float = 0.0
    emotion_log: list[tuple[int, bytes]] = field(default_factory=list)  # (sim time ns, CDR) of every /emotion
    expression_log: list[tuple[int, str, bytes]] = field(default_factory=list)  # (sim time ns, topic, CDR) of every
    #                                                                 hri_msgs/Expression the node published (ros4hri)
    voice_answers: list[tuple] = field(default_factory=list)  # the Expression each /emotion answer to a voice's speech
    #                                        is mirrored as (mirrored_as: ros4hri, flags not in NOT_MIRRORED), in order
    bag: str = ""  # the bag replayed, read again by write_recording
    texts: dict[str, str] = field(default_factory=dict)  # key -> the utterance's transcript, as the node read it
    node_status: dict = field(default_factory=dict)  # the node's diagnostic values when the replay ended
    captioner: str = ""  # which captioner wrote the answers' captions (ddvlm_core.captioner.captioner_id); '' none
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> its time span, seconds from the
    #                                                                      bag's first message (ddvlm_ros.time_labels)
    context_spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> the time span of a turn
    #              that only gave context (the robot's: robot_span; a context-only speaker's transcript: as a final's)
    heard: dict[str, float] = field(default_factory=dict)  # key -> when the node got it (its time in the bag, seconds
    #                                  from the first message), of the final utterances and the context-only turns
    idle_timeout_s: float = 0.0  # the node's: a silence this long in a conversation starts a new context (0: never)
    max_context_turns: int = 0  # the node's: the turns of a conversation a prompt reads, at most (0: not known)
    recorded_types: str = ""  # topics recorded with another version of their type (ddvlm_ros.recorded), in words
    asr_min_confidence: float = 0.0  # the node's: a transcript the ASR gave less confidence is flagged
    frames_not_played: int = 0  # the bag's camera frames, not played to a node without a captioner (not subscribed)

    def turns(self) -> list[str]:
        """The keys of every turn the node added to a dialogue, in the order it got them: the final utterances and,
        where they came, the turns that only gave context (the robot's)."""
        order, context = [], sorted(self.context_turns, key=lambda turn: turn[0])
        for position, key in enumerate([*self.finals, None]):
            while context and context[0][0] <= position:
                order.append(context.pop(0)[1])
            if key is not None:
                order.append(key)
        return order

    def contexts(self, keys: list[str]) -> list[str]:
        """Each key's dialogue context, as the node keeps them: its conversation, and in one conversation a new
        context when a turn came more than ``idle_timeout_s`` after the one before it (a ROS4HRI bag's voices all
        speak in the node's one conversation; so do a robot's sessions on one transcript topic): "<conversation>#<k>".
        As the node (``pipeline._conversation``): every turn counts, the robot's too (a robot that keeps talking keeps
        the context), each at the time it came, not when its words ended; a turn with no such time (results from
        before they were kept) at its span's end."""
        count, last, of = {}, {}, {}
        for key in self.turns():
            conversation = key.rpartition("/")[0]
            came = self.heard.get(key, self.spans.get(key, (0.0, 0.0))[1])
            if conversation in last and self.idle_timeout_s > 0 and came - last[conversation] > self.idle_timeout_s:
                count[conversation] = count.get(conversation, 0) + 1
            last[conversation] = came
            of[key] = f"{conversation}#{count.get(conversation, 0)}"
        return [of.get(key, key.rpartition("/")[0]) for key in keys]

    def camera_line(self) -> str:
        """What the node made of the bag's camera frames, with the reason when windows got none ('' without
        a camera)."""
        s = self.node_status
        if self.frames_not_played:
            return (f"camera: the bag's {self.frames_not_played} frames were not played: without a captioner the "
                    "node answers from text alone and does not subscribe the camera")
        counts = [int(s.get(k, 0) or 0) for k in ("frames", "bad_frames", "windows_without_frames")]
        if not any(counts):
            return ""
        miss = s.get("frame_window_miss", "")
        return (f"camera: {counts[0]} frames kept, {counts[1]} undecodable, {counts[2]} utterance windows without "
                f"a frame to caption" + (f" (the last: {miss})" if miss else ""))

    def transcript_line(self) -> str:
        """How many answered transcripts of 3+ words had no punctuation (flag ``transcript-unpunctuated``), and
        what that costs when most of them had none ('' when none)."""
        answered, flagged = self.flagged(UNPUNCTUATED_FLAG)
        if not flagged:
            return ""
        long = sum(len(self.texts.get(k, "").split()) >= UNPUNCTUATED_MIN_WORDS for k in answered)
        line = (f"transcripts: {flagged} of the {long} answered ones of {UNPUNCTUATED_MIN_WORDS}+ words have no "
                "punctuation")
        if 2 * flagged >= long:
            line += (" (an ASR that does not punctuate? the model, trained on punctuated text, scores far lower on "
                     "such text: reports/replay_asr_noise.md)")
        return line

    def flagged(self, flag: str) -> tuple[list[str], int]:
        """(the keys of the finals with a text answer, how many of those answers carry ``flag``)."""
        answered = [k for k in self.finals if "text" in self.answers.get(k, {})]
        return answered, sum(flag in self.answers[k]["text"].flags for k in answered)

    def flagged_line(self, flag: str, what: str) -> str:
        """'transcripts: k of the n answered ones <what> (flag <flag>)', '' when no answer carries ``flag``."""
        answered, flagged = self.flagged(flag)
        return f"transcripts: {flagged} of the {len(answered)} answered ones {what} (flag {flag})" if flagged else ""

    def language_line(self) -> str:
        """How many answered transcripts were not English (another script, or the ASR's language tag)."""
        return self.flagged_line(NOT_ENGLISH_FLAG, "are not English; the model reads English only, and those answers "
                                                   "say nothing of the speaker")

    def confidence_line(self) -> str:
        """How many answered transcripts had an ASR confidence below the node's asr_min_confidence."""
        return self.flagged_line(LOW_CONFIDENCE_FLAG, f"had an ASR confidence below {self.asr_min_confidence:g}")

    def expression_line(self) -> str:
        """ROS4HRI: whether every answer to a voice was mirrored as hri_msgs/Expression, each by its own: on the
        voice's topic, with the answer's stamp, top label and confidence ('' when no voice was answered)."""
        if not self.voice_answers:
            return ""
        n, published = len(self.voice_answers), Counter(expressions(self.expression_log))
        missed = sum((Counter(self.voice_answers) - published).values())
        unmatched = sum((published - Counter(self.voice_answers)).values())
        others = f"; {unmatched} Expression{'s' * (unmatched > 1)} published matched no answer" if unmatched else ""
        if not missed and not unmatched:
            return f"ROS4HRI: each of the {n} answers to voices was mirrored as hri_msgs/Expression"
        return (f"ROS4HRI: {missed} of the {n} answers to voices were not mirrored as hri_msgs/Expression (on its "
                f"voice's topic, with its stamp, top label and confidence){others}")

    def loop_line(self) -> str:
        """How many answered transcripts were ASR repetition loops (cut to LOOP_KEEP repeats)."""
        return self.flagged_line(REPETITION_LOOP_FLAG, f"were ASR repetition loops, cut to {LOOP_KEEP} repeats")

    def echo_line(self) -> str:
        """How many answered transcripts repeated what the robot had just said (its own speech heard back), and how
        many such transcripts the node dropped (``drop_self_echoes``: they count as unanswered)."""
        dropped = int(self.node_status.get("self_echoes_dropped", 0) or 0)
        lines = [self.flagged_line(SELF_ECHO_FLAG, "repeated what the robot had just said: its own speech heard back?"),
                 f"transcripts: {dropped} repeated what the robot had just said and were dropped (drop_self_echoes; "
                 "counted unanswered)" if dropped else ""]
        return "; ".join(line for line in lines if line)

    def partial_line(self) -> str:
        """How many answered transcripts repeated and extended the one before them: an ASR's partial results."""
        return self.flagged_line(PARTIAL_FLAG, "repeated and extended the one before them, as an ASR's partial "
                                               "results do (remap the topic of its final results)")

    def copy_line(self) -> str:
        """How many transcripts came a second time (two publishers of the ASR's topic recorded) and were dropped."""
        copies = self.node_status.get("duplicate_transcripts", "")
        return (f"transcripts: {copies}; a copy of a text transcript (numbered by the node) counts as unanswered"
                if copies else "")

    def late_line(self) -> str:
        """How many answered transcripts arrived after turns that ended after them (several ASRs, one per voice),
        and how many utterances were answered again for them (``revise_answers``)."""
        line = self.flagged_line(LATE_FLAG, "arrived after turns that ended after them (an ASR per voice?) and were "
                                            "placed before them by their end stamps")
        revised = sum("revised" in self.answers.get(k, {}) for k in self.finals)
        return line + (f"; {revised} utterances answered again with them in their context, scored by their latest "
                       f"answer (flag {REVISED_FLAG})" if line and revised else "")

    def prediction(self, key: str):
        """The utterance's latest answer: the fused one after the text one, a revised one after both."""
        entry = self.answers.get(key, {})
        return entry.get("latest") or entry.get("refined") or entry.get("text")

    def score(self, labels: dict[str, str]) -> dict:
        """Scores over the labelled utterances; with no labels at all, answer counts and latency only."""
        keys = [k for k in self.finals if k in labels] if labels else list(self.finals)
        answered = [k for k in keys if self.prediction(k) is not None]
        gold = [label_id(labels[k]) for k in answered] if labels else []
        pred = [LABELS.index(self.prediction(k).top_label) for k in answered]
        result = metrics(gold, pred) if gold else {"n": 0}
        if gold:
            from ddvlm_core.calibration import published_calibration

            # how far WA-F1 could move on another sample of such conversations
            result["wa_f1_interval"] = bootstrap_wa_f1(gold, pred, self.contexts(answered))
            # how far the published confidence can be trusted on this bag (ddvlm_core.calibration)
            published = published_calibration([list(self.prediction(k).probabilities) for k in answered], gold)
            result["calibration"] = {k: published[k] for k in ("ece", "nll", "mean_confidence", "reliability",
                                                               "coverage")}
            # a study's participants: on whom the model is wrong, and how (labelled as / answered as)
            result["per_speaker"] = per_speaker([self.prediction(k).speaker_id for k in answered], gold, pred)
            # how right the answers a flag marks are, against the others (e.g. whether to trust them less)
            result["per_flag"] = per_flag([list(self.prediction(k).flags) for k in answered], gold, pred)
        latencies = [self.answers[k]["text"].latency_ms for k in answered if "text" in self.answers[k]]
        result |= {
            "utterances": len(keys), "answered": len(answered), "unanswered": len(keys) - len(answered),
            "refined": sum(1 for k in answered if "refined" in self.answers[k]),
            "revised": sum(1 for k in answered if "revised" in self.answers[k]),
            "duplicates": sum(self.answers[k].get("duplicates", 0) for k in answered),
            "latency_ms": {"p50": float(np.percentile(latencies, 50)), "p90": float(np.percentile(latencies, 90)),
                           "max": float(max(latencies))} if latencies else {},
        }
        return result


def per_speaker(speakers: list[str], gold: list[int], pred: list[int]) -> dict[str, dict]:
    """Per speaker ('' = unknown), most utterances first: how many, accuracy (percent), the label they were most
    often given by the annotators and by the model (the earliest in LABELS on a tie)."""
    from collections import Counter

    def most_often(label_ids: list[int]) -> str:
        counts = Counter(label_ids)
        return LABELS[min(i for i, n in counts.items() if n == max(counts.values()))]

    rows = {}
    for speaker in sorted(set(speakers), key=lambda s: (-speakers.count(s), s)):
        mine = [i for i, s in enumerate(speakers) if s == speaker]
        rows[speaker] = {"n": len(mine), "accuracy": 100.0 * sum(gold[i] == pred[i] for i in mine) / len(mine),
                         "labelled_most": most_often([gold[i] for i in mine]),
                         "answered_most": most_often([pred[i] for i in mine])}
    return rows


def replay(bag: str | Path, params: dict, speed: float = 1.0, answer_timeout_s: float = 60.0,
           on_answer=None, max_in_flight: int = 0, remaps: dict[str, str] | None = None,
           progress: bool = False, on_final=None) -> ReplayResult:
    """Play ``bag`` into a fresh node. ``max_in_flight`` > 0 holds back the next utterance while that many
    are unanswered (evaluation of a whole split faster than real time without overrunning the node).
    ``remaps``: bag topic -> node input, for topics not named like the inputs (see ``input_topics``).
    ``on_final(key, span, speaker)`` is called for each final utterance before the node gets it (``span``: as
    ``utterance_span``)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock

    from ddvlm_ros.convert import sec_to_stamp
    from ddvlm_ros.emotion_node import EmotionNode
    from ddvlm_ros.msgs import EmotionDistribution

    in_bag, counts, t_first = bag_topics(bag)
    if t_first is None:
        raise BagError(f"{bag}: no messages")
    topics = input_topics(in_bag, remaps, ros4hri=bool(params.get("ros4hri")))
    decoder = recorded_types(bag)
    result = ReplayResult(bag=str(bag))
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = [Parameter("use_sim_time", value=True)] + [Parameter(k, value=v) for k, v in params.items()]
    node = EmotionNode(context=ctx, parameter_overrides=overrides)
    player = rclpy.create_node("ddvlm_replay", context=ctx)
    lock = threading.Lock()

    voices = {_ros4hri_parts(t)[1] for t in topics if is_speech(t)}

    def on_emotion(msg):
        key = f"{msg.conversation_id}/{msg.utterance_id}"
        with lock:
            if msg.speaker_id in voices and mirrored(msg.flags):
                result.voice_answers.append(mirrored_as(msg))
            entry = result.answers.setdefault(key, {})
            slot = "revised" if REVISED_FLAG in msg.flags else "refined" if msg.refined else "text"
            if slot in entry and slot != "revised":  # revised again for each late transcript placed before it
                entry["duplicates"] = entry.get("duplicates", 0) + 1
            entry[slot] = entry["latest"] = msg
            result.emotion_log.append((node.get_clock().now().nanoseconds, bytes(serialize_message(msg))))
        if on_answer is not None:
            on_answer(key, msg)

    player.create_subscription(EmotionDistribution, "emotion", on_emotion, 500)
    expressions = expression_subscriptions(player, voices, node, result, lock) if params.get("ros4hri") else {}
    clock_pub = player.create_publisher(Clock, "/clock", 10)
    pubs, types = {}, {}
    for topic, node_input in topics.items():
        types[topic] = ros_type(in_bag[topic])
        pubs[topic] = player.create_publisher(types[topic], node_input, publisher_qos(node_input))
    executor = SingleThreadedExecutor(context=ctx)  # as the node's main(): callbacks only enqueue
    executor.add_node(node)
    executor.add_node(player)
    spinner = BackgroundSpin(executor)
    try:
        clock_pub.publish(Clock(clock=sec_to_stamp(t_first, type(Clock().clock))))
        node.trigger_configure()
        if node.load_error:
            raise NodeConfigureError(f"the emotion node did not configure: {node.load_error}")
        node.trigger_activate()
        if not node.captions_frames():  # text alone: the node does not subscribe the camera, nor is it played,
            # nor the VADs and the robot's speaking, which only place the windows of captions
            unplayed = [t for t in topics if topics[t] in (*CAMERA_INPUTS, *TIMING_INPUTS)
                        or IS_SPEAKING_TOPIC.fullmatch(t)]
            result.frames_not_played = sum(counts[t] for t in unplayed if topics[t] in CAMERA_INPUTS)
            vads_only = {t: topics[t] for t in unplayed if topics[t] in TIMING_INPUTS or IS_SPEAKING_TOPIC.fullmatch(t)}
            topics = {t: node_input for t, node_input in topics.items() if t not in unplayed}
        else:
            vads_only = {}
        subscribed_now = [pubs[t] for t in topics if not t.startswith("/humans/") or t == f"{VOICES}/tracked" or
                          (t == f"{PERSONS}/tracked" and node._persons is not None) or
                          (t.endswith("/tracked") and node._crops is not None)]  # ROS4HRI's others: once tracked
        wait_for(lambda: all(p.get_subscription_count() for p in subscribed_now), 10.0)
        answer_key = AnswerKeys(node.p("conversation_id"), node.p("default_speaker"), node.p("speaker_prefix"),
                                crops_read=node._crops is not None)
        result.idle_timeout_s, result.asr_min_confidence = node.p("idle_timeout_s"), node.p("asr_min_confidence")
        result.max_context_turns = node.p("max_context_turns")
        skipped: set[str] = set()  # final utterances the node does not classify (no text): no answer to wait for
        links_sent: dict[str, dict[str, str]] = {}  # person -> {link: value} published (latched) so far
        in_step = True  # the node numbers what answer_key numbers (one that waited in vain: it does not; no more waits)
        vads = BagVads()  # the bag's VADs, read (not played without a captioner) to place the spans
        robot_said: list[tuple[str, float, str]] = []  # (key, bag time, text) of what the robot said (robot_speech)

        def unanswered(keys: list[str]) -> list[str]:
            with lock:
                return [k for k in keys if k not in skipped and "text" not in result.answers.get(k, {})]

        started = time.monotonic()
        played = bag_messages(bag, {**topics, **vads_only})
        if progress:  # a whole MELD split takes minutes: a bar with an ETA (``--live`` prints a line per answer)
            from tqdm import tqdm

            played = tqdm(played, total=sum(counts[t] for t in {**topics, **vads_only}), desc="replay", unit="msg",
                          mininterval=10)
        for t, topic, msgtype, raw in played:
            if topic in vads_only:  # not played: the node does not read it without a captioner
                vads.read(vads_only[topic], topic, decode(decoder, topic, raw, types[topic]), t, answer_key)
                continue
            delay = (t - t_first) / speed - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
            if max_in_flight and (topics[topic] in TRANSCRIBED or is_speech(topic)):
                # an utterance the node dropped is not waited for forever
                wait_for(lambda: len(unanswered(result.finals)) < max_in_flight, answer_timeout_s, poll_s=0.01)
            clock_pub.publish(Clock(clock=sec_to_stamp(t, type(Clock().clock))))
            msg = decode(decoder, topic, raw, types[topic])
            vads.read(topics[topic], topic, msg, t, answer_key)
            numbered = answer_key.counter
            if answered := answer_key(topics[topic], msg, t):
                key, speaker, text = answered
                # where the node places its words (a VAD's speech is used by each transcript it places, as in the node)
                span = utterance_span(topics[topic], msg, text, t, node.asr_timing(), t_first,
                                      answer_key.started.pop(key, None), vads.placing(topics[topic], topic, msg))
                # context_only_speakers (the robot) get no answer; nor does what was not speech ([BLANK_AUDIO])
                robot = node.pipeline.context_only(speaker)
                said = strip_tts_markup(text) if robot else text  # as the node reads it: its TTS markup out
                if robot and has_text(said) and not non_speech(said):
                    result.context_turns.append((len(result.finals), key, speaker, said))
                    result.heard[key] = t - t_first
                    result.context_spans[key] = span
                elif not robot and not non_speech(text):
                    result.finals.append(key)
                    result.texts[key] = text
                    result.heard[key] = t - t_first
                    result.spans[key] = span
                    if on_final is not None:
                        on_final(key, result.spans[key], speaker)
                    if not has_text(text):  # blank: the node skips it (counted unanswered)
                        skipped.add(key)
            elif topics[topic] == "robot_speech" and answer_key.counter > numbered and has_text(
                    said := strip_tts_markup(msg.data)):  # what the robot said, as the node reads it
                key = f"{answer_key.conversation_id}/{answer_key.counter}"
                result.context_turns.append((len(result.finals), key, ROBOT_SPEAKER, said))
                result.heard[key] = t - t_first
                robot_said.append((key, t, said))
            if answer_key.subscribes(topic):  # a voice or crop the node has just begun to track: not lost to discovery
                wait_for(lambda p=pubs[topic]: p.get_subscription_count() > 0, SUBSCRIBE_WAIT_S)
                if (expression := expressions.get(_ros4hri_parts(topic)[1])) is not None and is_speech(topic):
                    wait_for(lambda e=expression: publisher_count(player, e) > 0, SUBSCRIBE_WAIT_S)  # its answers too
            if topic == f"{VOICES}/tracked" and answer_key.leaving:  # what the voices it drops said is answered
                # first, as on the robot, where 1 s passes (here perhaps a millisecond): the node hears them for
                # VOICE_LINGER_S of ROS time, which this /clock would otherwise run past before it read them
                wait_for(lambda: not unanswered([k for k in answer_key.leaving if k in result.texts]), SUBSCRIBE_WAIT_S)
            if answer_key.counter > numbered and in_step:  # it takes the node's next number: after the node numbered
                # the one before, which may have come on another topic (another voice), where nothing orders delivery
                in_step = wait_for(lambda n=numbered: node._counter >= n, SUBSCRIBE_WAIT_S)  # else: not numbered
            pubs[topic].publish(msg)
            kind, ident, leaf = _ros4hri_parts(topic)
            if kind == "persons" and leaf in LINKS:
                links_sent.setdefault(ident, {})[leaf] = msg.data.strip()
            elif topic == f"{PERSONS}/tracked" and node._persons is not None:  # the links latched before: read
                # before the persons' voices speak (on the robot they had a second; under load here, not)
                wait_for(lambda ids=set(msg.ids): links_read(node._persons, ids, links_sent), SUBSCRIBE_WAIT_S)
        result.context_spans.update(robot_spans(robot_said, vads.robot_intervals, t_first))  # its speaking: all read
        deadline, idle_since = time.monotonic() + answer_timeout_s, None
        while time.monotonic() < deadline:
            missing = unanswered(result.finals)
            idle = node.pipeline.idle()
            if idle and not missing:
                break
            idle_since = (idle_since or time.monotonic()) if idle else None
            if idle_since is not None and time.monotonic() - idle_since > SETTLED_S:  # the node dropped those
                break
            time.sleep(0.05)
        time.sleep(0.3)  # late refined answers
        result.wall_s = time.monotonic() - started
        result.recorded_types = decoder.summary()
        result.node_status = {kv.key: kv.value for kv in node.diagnostic_status().values}
        if node.pipeline.captioner is not None:
            result.captioner = captioner_id(node.pipeline.captioner)
    finally:
        if node.pipeline is not None:
            node.pipeline.stop()
        spinner.stop()  # spin must be out of rcl_wait before the context goes
        node.destroy_node()
        player.destroy_node()
        rclpy.shutdown(context=ctx)
    return result


def expression_subscriptions(player, voices: set[str], node, result: ReplayResult, lock) -> dict:
    """voice id -> a subscription of ``player`` to the voice's hri_msgs/Expression topic, logging what the node
    publishes there (``result.expression_log``, raw CDR at the node's time); {} without hri_msgs."""
    from ddvlm_ros.ros4hri import hri_msgs_available

    if not hri_msgs_available():
        return {}
    from hri_msgs.msg import Expression

    def log(topic: str, raw: bytes) -> None:
        with lock:
            result.expression_log.append((node.get_clock().now().nanoseconds, topic, bytes(raw)))

    return {voice: player.create_subscription(Expression, f"{VOICES}/{voice}/expression",
                                              lambda raw, t=f"{VOICES}/{voice}/expression": log(t, raw), 500, raw=True)
            for voice in sorted(voices) if valid_id(voice)}


def expression_key(topic: str, stamp, name: str, confidence: float) -> tuple[str, int, str, float]:
    """What an answer and the Expression that mirrors it are matched on: (topic, stamp ns, Expression constant name,
    confidence to 5 places), built the same way for both sides."""
    return topic, stamp.sec * 10**9 + stamp.nanosec, name, round(float(confidence), 5)


def mirrored_as(answer) -> tuple[str, int, str, float]:
    """The ``expression_key`` of the hri_msgs/Expression an /emotion answer to a voice is mirrored as."""
    return expression_key(f"{VOICES}/{answer.speaker_id}/expression", answer.header.stamp,
                          EXPRESSION_NAME.get(answer.top_label, answer.top_label), answer.confidence)


def expressions(log: list[tuple[int, str, bytes]]) -> list[tuple[str, int, str, float]]:
    """The ``expression_key`` of each hri_msgs/Expression of ``ReplayResult.expression_log``."""
    if not log:
        return []
    from hri_msgs.msg import Expression
    from rclpy.serialization import deserialize_message

    names = {getattr(Expression, name): name for name in EXPRESSION_NAME.values()}
    read = []
    for _, topic, raw in log:
        e = deserialize_message(raw, Expression)
        read.append(expression_key(topic, e.header.stamp, names.get(e.expression, e.expression), e.confidence))
    return read


def links_read(links, persons: set[str], sent: dict[str, dict[str, str]]) -> bool:
    """Whether the node's ``PersonLinks`` holds each link of ``persons`` that the replay has published."""
    with links.lock:
        return all(links.links.get(person, {}).get(link) == value
                   for person in persons if valid_id(person) for link, value in sent.get(person, {}).items())


def publisher_count(node, subscription) -> int:
    """Publishers matched to ``subscription`` (rclpy before Iron: those on its topic in the graph)."""
    count = getattr(subscription, "get_publisher_count", None)
    return count() if count is not None else node.count_publishers(subscription.topic_name)


def _ros4hri_parts(topic: str) -> tuple[str, str, str]:
    """'/humans/voices/anna/speech' -> ('voices', 'anna', 'speech'); '/humans/voices/tracked' -> ('voices', 'tracked',
    '')."""
    kind, ident, leaf = (topic.split("/") + ["", "", ""])[2:5]
    return kind, ident, leaf


def wait_for(condition: Callable[[], bool], seconds: float, poll_s: float = 0.002) -> bool:
    """Poll ``condition`` every ``poll_s`` until it holds or ``seconds`` have passed; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def utterance_span(node_input: str, msg, text: str, arrived: float, timing: AsrTiming,
                   t_first: float, started: float | None = None,
                   activity: VoiceActivity | None = None) -> tuple[float, float]:
    """When an utterance (its words ``text``) was said, in seconds from the bag's first message (``t_first``), as the
    node reads it for its camera window: an ``Utterance``'s start and end stamps (its header stamp for a missing end);
    a ROS4HRI voice's final result: its header stamp, and when its first incremental result came (``started``);
    a whisper_ros Transcription: from its audio's duration and its transcription time (``AsrTiming.transcribed``);
    else, and for a transcript, estimated by ``timing`` (the node's ``asr_timing``) from its words and when it
    ``arrived`` (its time in the bag). Then, as the node places its camera window when it captions, on the speech a VAD
    heard (``activity``: ``BagVads.placing``; ``VoiceActivity.heard``), where it heard fresh speech."""
    start, end = _said(node_input, msg, text, arrived, timing, started)
    window = activity.heard(arrived, timing.endpoint_s, (start, end), longest_s(text)) if activity else None
    start, end = window or (start, end)
    return start - t_first, end - t_first


def _said(node_input: str, msg, text: str, arrived: float, timing: AsrTiming,
          started: float | None) -> tuple[float, float]:
    """``utterance_span`` before a VAD places it, in the bag's time."""
    end = start = 0.0
    if node_input == "transcription":
        try:
            return timing.transcribed(msg.audio_time, msg.transcription_time, arrived)
        except ValueError:  # no times: estimated, as the node does
            pass
    elif node_input == "utterance":
        end = stamp_to_sec(msg.end) or stamp_to_sec(msg.header.stamp)
        start = stamp_to_sec(msg.start)
    elif is_speech(node_input):
        end = stamp_to_sec(msg.header.stamp)
        start = started if started is not None and started <= (end or arrived) else 0.0
    end = end or timing.said(text, arrived)[1]
    start = start if 0 < start <= end else timing.started(text, end)
    return start, end


ROBOT_LEAD_S = 0.5  # a TTS may say it speaks a moment before the text it got is recorded (another process)
ROBOT_DELAY_S = 3.0  # and begins to speak at most this long after it got the text (synthesis; a TTS queue's turn)
ROBOT_PAUSE_S = 1.0  # pauses of its speaking shorter than this are within one turn (a TTS that speaks by sentences)


def robot_span(heard: float, said: str, speaking: list[list], after: float = -math.inf,
               until: float = math.inf) -> tuple[float, float]:
    """When the robot said ``said``, whose text its TTS got at ``heard`` (its robot_speech message; bag time, s), as
    its ``robot_speaking`` says (``speaking``: BagVads.robot_intervals): from the first interval that began between
    ROBOT_LEAD_S before ``heard`` and ROBOT_DELAY_S after it, after ``after`` (the end of its turn before) and before
    ``until`` (its next turn), to the end of the last one joined to it by pauses shorter than ROBOT_PAUSE_S, at most
    ``longest_s(said)`` long (as a person's window; also where it still spoke at the bag's end). With none (no
    robot_speaking recorded), estimated from its words as a transcript's is: from ``heard``, for ``spoken_s(said)``."""
    for k, (on, off) in enumerate(speaking):
        if max(heard - ROBOT_LEAD_S, after) <= on <= heard + ROBOT_DELAY_S and on < until:
            end = off
            for next_on, next_off in speaking[k + 1:]:
                if end is None or next_on >= until or next_on - end >= ROBOT_PAUSE_S:
                    break
                end = next_off
            return on, min(math.inf if end is None else end, on + longest_s(said))
    return heard, heard + spoken_s(said)


def robot_spans(said: list[tuple[str, float, str]], speaking: list[list], t_first: float) -> dict[str, tuple]:
    """key -> ``robot_span`` of each (key, bag time, text) the robot said, in seconds from the bag's first message."""
    spans, after = {}, -math.inf
    for k, (key, heard, text) in enumerate(said):
        until = said[k + 1][1] if k + 1 < len(said) else math.inf
        start, end = robot_span(heard, text, speaking, after, until)
        spans[key], after = (start - t_first, end - t_first), end
    return spans


class BagVads:
    """The VADs a bag recorded, read as the node reads them when it captions (``ddvlm_core.voice_activity``):
    ``voice_activity``, the robot's ``robot_speaking`` (what the VADs hear meanwhile is the robot), and each ROS4HRI
    voice's ``is_speaking`` while the node hears the voice (forgotten when it is tracked again after its linger ran
    out). ``placing`` says which one places a transcript's span, as it places the node's camera window: a transcript
    and an Utterance with no stamps on ``voice_activity``, a voice's final result on its own ``is_speaking``."""

    def __init__(self):
        self.shared: VoiceActivity | None = None  # voice_activity
        self.voices: dict[str, VoiceActivity] = {}  # ROS4HRI voice id -> its is_speaking
        self.robot_speaking = False
        self.robot_intervals: list[list] = []  # [on, off] of robot_speaking (bag time, s; off None while it speaks)

    def read(self, node_input: str, topic: str, msg, t: float, keys: AnswerKeys) -> None:
        """A message on ``topic`` at bag time ``t``, before ``keys`` reads it (it says which voices the node hears)."""
        if node_input == "robot_speaking":
            if bool(msg.data) != self.robot_speaking:
                if msg.data:
                    self.robot_intervals.append([t, None])
                elif self.robot_intervals:
                    self.robot_intervals[-1][1] = t
            self.robot_speaking = bool(msg.data)
            for activity in [self.shared, *self.voices.values()]:
                if activity is not None:
                    activity.robot(self.robot_speaking, t)
        elif node_input == "voice_activity":
            self.shared = self.shared or VoiceActivity(robot_speaking=self.robot_speaking)
            self.shared.hear(bool(msg.data), t)
        elif IS_SPEAKING_TOPIC.fullmatch(topic):
            voice = _ros4hri_parts(topic)[1]
            if voice in keys.tracked.get("voices", ()) or keys.still_heard(voice, t):
                self.voices.setdefault(voice, VoiceActivity(robot_speaking=self.robot_speaking)).hear(bool(msg.data), t)
        elif topic == f"{VOICES}/tracked":
            for voice in set(msg.ids) & set(keys.left):
                if not keys.still_heard(voice, t) and voice in self.voices:  # back after its linger: heard anew
                    self.voices[voice].forget()

    def placing(self, node_input: str, topic: str, msg) -> VoiceActivity | None:
        """The VAD that places the span of a transcript on ``topic`` (None: its stamps or its words do)."""
        if node_input == "transcript":
            return self.shared
        if node_input == "utterance" and not (stamp_to_sec(msg.end) or stamp_to_sec(msg.header.stamp)
                                              or stamp_to_sec(msg.start)):
            return self.shared
        if is_speech(topic):
            return self.voices.get(_ros4hri_parts(topic)[1])
        return None


class AnswerKeys:
    """The "conversation/utterance" key of the node's answer to each replayed message, with the speaker and text the
    node takes from it (None for one it does not classify), numbered as the node numbers them: a transcript, or a
    final Utterance without an utterance_id, or a whisper_ros Transcription, takes the next number of the node's one
    counter (EmotionNode._next_id); an Utterance without a conversation_id goes to the node's conversation_id. ROS4HRI
    (``ddvlm_ros.ros4hri``): the node hears the speech of the voices the latest ``/humans/voices/tracked`` names; a
    voice's first incremental result takes the next number (and starts its utterance: ``started``), its final result
    that number, or the next one after no incremental result; the ids that ``/humans/*/tracked`` name are kept
    (``tracked``), as the node subscribes their topics, crops only where it reads them (``crops_read``: with a
    captioner); a voice that the latest list drops is still heard for VOICE_LINGER_S of bag time (``left``: when
    it was dropped), as the node hears it for as long in ROS time, which a replay's /clock sets; ``leaving``: the
    keys of what the voices that the latest list drops said."""

    def __init__(self, conversation_id: str, default_speaker: str = "", speaker_prefix: bool = True,
                 crops_read: bool = False):
        self.conversation_id = conversation_id
        self.default_speaker, self.speaker_prefix = default_speaker, speaker_prefix
        self.crops_read = crops_read
        self.counter = 0
        self.tracked: dict[str, set[str]] = {}  # voices | persons | bodies | faces -> the ids its latest list names
        self.speaking: dict[str, str] = {}  # voice -> the key of its utterance, from its first incremental result
        self.started: dict[str, float] = {}  # key -> when its voice's first incremental result came (bag time, s)
        self.left: dict[str, float] = {}  # voice that a tracked list dropped -> when (bag time, s), until it is back
        self.said: dict[str, list[str]] = {}  # voice -> the keys of its final results while tracked
        self.leaving: list[str] = []  # the keys of the final results of the voices that the latest tracked list drops

    def __call__(self, node_input: str, msg, arrived: float = 0.0) -> tuple[str, str, str] | None:
        """(key, speaker, text) of a message that came at ``arrived`` (bag time), or None."""
        if node_input.startswith("/humans/"):
            return self._ros4hri(node_input, msg, arrived)
        if node_input == "transcript":  # an ASR's JSON partial result is skipped: no number
            said = transcript_said(msg.data, self.default_speaker, self.speaker_prefix)
            return (f"{self.conversation_id}/{self._next()}", *said) if said is not None else None
        if node_input == "transcription":  # whisper_ros': numbered, default_speaker's (blank too: skipped unanswered)
            return f"{self.conversation_id}/{self._next()}", self.default_speaker, msg.text
        if node_input == "robot_speech":  # numbered too; never answered
            self._next()
            return None
        if node_input != "utterance" or not msg.is_final:
            return None
        key = f"{msg.conversation_id or self.conversation_id}/{msg.utterance_id or self._next()}"
        return key, msg.speaker_id, msg.text

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _ros4hri(self, topic: str, msg, arrived: float) -> tuple[str, str, str] | None:
        kind, ident, leaf = _ros4hri_parts(topic)
        if ident == "tracked":
            gone = self.tracked.get(kind, set()) - (tracked := {i for i in msg.ids if valid_id(i)})
            self.tracked[kind] = tracked
            if kind == "voices":
                for voice in tracked & set(self.left):  # back: its utterance goes on if it was still heard
                    if not self.still_heard(voice, arrived):
                        self.speaking.pop(voice, None)
                    del self.left[voice]
                self.left.update(dict.fromkeys(gone, arrived))
                self.leaving = [key for voice in gone for key in self.said.pop(voice, [])]
            return None
        if leaf != "speech":
            return None
        if ident not in self.tracked.get("voices", ()) and not self.still_heard(ident, arrived):
            self.speaking.pop(ident, None)  # a voice the node does not hear (any more: its utterance is over)
            return None
        if msg.final.strip():
            key = self.speaking.pop(ident, None) or f"{self.conversation_id}/{self._next()}"
            self.said.setdefault(ident, []).append(key)
            return key, ident, msg.final
        if msg.incremental.strip() and ident not in self.speaking:
            key = self.speaking[ident] = f"{self.conversation_id}/{self._next()}"
            self.started[key] = arrived
        return None

    def still_heard(self, voice: str, arrived: float) -> bool:
        """Whether a voice that a tracked list dropped is still heard at bag time ``arrived``."""
        return voice in self.left and arrived - self.left[voice] <= VOICE_LINGER_S

    def subscribes(self, topic: str) -> bool:
        """Whether the node subscribes ``topic``, a voice's speech (and with a captioner its is_speaking) or a body's
        or face's crops, because a tracked list named its id (it then may not have matched the replay's publisher
        yet)."""
        kind, ident, leaf = _ros4hri_parts(topic)
        if not topic.startswith("/humans/") or ident not in self.tracked.get(kind, ()):
            return False
        return (leaf == "speech" or (leaf == "is_speaking" and self.crops_read)
                or (leaf == "cropped" and self.crops_read and f"/humans/{kind}" in CROPPED.values()))


def recorded_types(bag: str | Path) -> RecordedTypes:
    """The bag's message definitions, to decode its messages as the installed types (BagError for a broken bag)."""
    try:
        return RecordedTypes(bag)
    except Exception as e:  # rosbags raises several types for broken bags
        raise BagError(f"{bag}: cannot read bag ({type(e).__name__}: {e})") from None


def decode(decoder: RecordedTypes, topic: str, raw: bytes, cls):
    """One of the bag's messages as the installed ``cls`` (BagError when it cannot be: ddvlm_ros.recorded)."""
    try:
        return decoder.decode(topic, raw, cls)
    except DefinitionError as e:
        raise BagError(str(e)) from None


def offline_predictions(bag: str | Path, recognizer) -> dict[str, str]:
    """What ddvlm_core predicts, offline, for every final utterance of a bag (same contexts, text only)."""
    decoder = recorded_types(bag)
    contexts: dict[str, list[tuple[str, str]]] = {}
    out = {}
    for _, topic, msgtype, raw in bag_messages(bag, ["/utterance"]):
        msg = decode(decoder, topic, raw, ros_type(msgtype))
        if not msg.is_final or non_speech(msg.text):
            continue
        turns = contexts.setdefault(msg.conversation_id, [])
        turns.append((msg.speaker_id, msg.text))
        out[f"{msg.conversation_id}/{msg.utterance_id}"] = recognizer.predict(list(turns)).top_label
    return out


def parse_params(items: list[str]) -> dict[str, object]:
    """``NAME:=VALUE`` strings -> typed node parameters (ddvlm_ros.params); ValueError naming the bad ones."""
    from ddvlm_ros.params import typed_overrides

    return typed_overrides(assignments(items, lambda item: ValueError(f"--param {item!r}: expected NAME:=VALUE"),
                                       empty_value=True), "--param")


def assignments(items: list[str], error: Callable[[str], Exception], empty_value: bool = False) -> dict[str, str]:
    """``['A:=B', ...]`` (ROS's ``:=`` syntax) -> ``{'A': 'B'}``; ``error(item)`` is raised for an item
    without ``:=``, with nothing before it, or (unless ``empty_value``) nothing after it."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name or not (value or empty_value):
            raise error(item)
        pairs[name] = value
    return pairs


def report_markdown(title: str, score: dict, bag: str, params: dict, speed: float, extra: str = "",
                    notes: tuple[str, ...] = (), confusion_image: str = "") -> str:
    """The replay's report; ``notes``: lines on its inputs (the camera, the transcripts), '' ones left out;
    ``confusion_image``: the confusion matrix drawn (``ddvlm_core.metrics.confusion_png``), next to the report."""
    lines = [f"# {title}", "", f"Bag `{bag}`, replayed at {speed}x through the emotion node "
             f"(`python -m ddvlm_ros.replay`), params {json.dumps(params)}. {extra}", ""]
    if not score.get("utterances"):
        return "\n".join(lines + ["No final utterance was replayed."]) + "\n"
    lines.append(f"- utterances: {score['utterances']}, answered {score['answered']}, unanswered "
                 f"{score['unanswered']}, refined {score['refined']}, duplicate answers {score['duplicates']}")
    lines += [f"- {note}" for note in notes if note]
    if score["latency_ms"]:
        lines.append(f"- text-result latency ms: p50 {score['latency_ms']['p50']:.1f}, "
                     f"p90 {score['latency_ms']['p90']:.1f}, max {score['latency_ms']['max']:.1f}")
    if not score.get("n"):
        return "\n".join(lines + ["- no labels for these utterances: no scores"]) + "\n"
    lines.append(f"- WA-F1 **{score['wa_f1']:.2f}** ({interval_words(score['wa_f1_interval'], 'conversations')}), "
                 f"macro F1 {score['macro_f1']:.2f}, accuracy {score['accuracy']:.2f}")
    if "calibration" in score:
        c = score["calibration"]
        lines.append(f"- confidence as published: mean {c['mean_confidence']:.1f} % against accuracy "
                     f"{score['accuracy']:.1f} %, expected calibration error {c['ece']:.2f} %, NLL {c['nll']:.3f}")
    lines += ["", *class_f1_lines(score["per_class_f1"])]
    if "coverage" in score.get("calibration", {}):  # answers acted on only above a confidence: how many, how right
        lines += ["", *coverage_table(score["calibration"]["coverage"])]
    if score.get("per_flag"):
        lines += ["", *flag_lines(score["per_flag"])]
    speakers = list(score.get("per_speaker", {}).items())
    if speakers:
        lines += ["", "| speaker | utterances | accuracy | labelled most often | answered most often |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name or '(unknown)'} | {r['n']} | {r['accuracy']:.1f} | {r['labelled_most']} | "
                  f"{r['answered_most']} |" for name, r in speakers[:MAX_SPEAKER_ROWS]]
        if len(speakers) > MAX_SPEAKER_ROWS:
            lines.append(f"| {len(speakers) - MAX_SPEAKER_ROWS} more speakers (JSON: score.per_speaker) | | | | |")
    lines += ["", *confusion_lines(score["confusion"], confusion_image)]
    return "\n".join(lines) + "\n"


EMOTION_TYPE = "ddvlm_msgs/msg/EmotionDistribution"
EXPRESSION_TYPE = "hri_msgs/msg/Expression"  # the node's ROS4HRI answers, on /humans/voices/<id>/expression
MAX_SPEAKER_ROWS = 15  # speakers listed in the Markdown report (all of them in its JSON)
TIME_LABEL_SUFFIXES = (".csv", ".tsv", ".txt", ".eaf")  # --labels given as time intervals (ddvlm_ros.time_labels)


def write_recording(out: str | Path, result: ReplayResult) -> tuple[Path, int]:
    """A new bag (mcap): the replayed bag's messages plus every /emotion answer at the simulated time it
    came out, to look at side by side (e.g. in Foxglove or rqt_bag). Each topic keeps the definition the bag
    recorded for its type (a robot's own packages, an older hri_msgs); a topic of a bag that recorded none (sqlite3
    before Iron) is written by the definition installed here, and left out where its type is unknown here; returns
    (bag, how many messages were left out)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ddvlm_ros.bag import typestore

    store, out, recorded = typestore(), Path(out), recorded_types(result.bag)
    index = bag_topics(result.bag)  # which topics can be written, how many messages cannot
    known = {topic for topic, msgtype in index.types.items()
             if recorded.recorded_msg(topic) is not None or msgtype in store.types}
    left_out = sum(count for topic, count in index.counts.items() if topic not in known)
    played = ((int(round(t * 1e9)), topic, msgtype, raw) for t, topic, msgtype, raw in bag_messages(result.bag, known))
    answers = sorted([(t, "/emotion", EMOTION_TYPE, raw) for t, raw in result.emotion_log] +
                     [(t, topic, EXPRESSION_TYPE, raw) for t, topic, raw in result.expression_log], key=lambda e: e[0])
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:  # (rosbags' default: sqlite3)
        connections = {}
        for t, topic, msgtype, raw in heapq.merge(played, answers, key=lambda e: e[0]):  # both in time order
            if (topic, msgtype) not in connections:
                own = recorded.recorded_msg(topic) if msgtype not in (EMOTION_TYPE, EXPRESSION_TYPE) else None
                connections[topic, msgtype] = (
                    writer.add_connection(topic, msgtype, msgdef=own[0], rihs01=own[1] or None) if own else
                    writer.add_connection(topic, msgtype, typestore=store))
            writer.write(connections[topic, msgtype], t, raw)
    return out, left_out


def answer_records(result: ReplayResult, labels: dict[str, str]) -> list[dict]:
    """One record per replayed final utterance (in order): its text, refined and latest revised answers, the label
    it is scored by and its confidence (``prediction``, ``confidence``: its latest answer's), the gold label, the
    dialogue context it joined (``context``: "<conversation>#<k>", a new k after the node's idle_timeout_s) and how
    many turns of it the node reads (``max_context_turns``), and with a captioner which one wrote the answers'
    captions (``captioner``: its id, as training's caption records have it); between them, where they came, one
    per turn that only joined the context (the robot's: ``context_only``, its text, no answer and no label), so
    that a file holds each dialogue as the node read it."""
    def answer(msg):
        return None if msg is None else {
            "top_label": msg.top_label, "confidence": msg.confidence,
            "probabilities": dict(zip(msg.labels, map(float, msg.probabilities))),
            "modalities": msg.modalities, "caption": msg.caption, "caption_source": msg.caption_source,
            "latency_ms": msg.latency_ms, "flags": list(msg.flags),
            "transcript_confidence": float(msg.transcript_confidence)}

    records, context = [], {turn[1]: turn for turn in result.context_turns}
    turns = result.turns()
    contexts = dict(zip(turns, result.contexts(turns)))
    for key in turns:
        if key in context:  # a turn that only gave context, where it came
            _, _, speaker, text = context[key]
            span = result.context_spans.get(key)
            records.append({"key": key, "speaker_id": speaker, "context_only": True, "transcript": text,
                            "gold": None, "prediction": None, "confidence": None,
                            "span_s": list(span) if span else None, "context": contexts[key]})
            continue
        entry, scored = result.answers.get(key, {}), result.prediction(key)
        first = entry.get("text") or entry.get("refined")
        records.append({"key": key, "speaker_id": first.speaker_id if first else None,
                        "prediction": scored.top_label if scored else None,
                        "confidence": float(scored.confidence) if scored else None,
                        "speaker_token": first.speaker_token if first else None,
                        "transcript": result.texts.get(key), "gold": labels.get(key),
                        "span_s": list(result.spans[key]) if key in result.spans else None,
                        "text": answer(entry.get("text")), "refined": answer(entry.get("refined")),
                        "revised": answer(entry.get("revised")), "context": contexts[key],
                        "max_context_turns": result.max_context_turns,
                        **({"captioner": result.captioner} if result.captioner else {})})
    return records


def parse_remaps(items: list[str]) -> dict[str, str]:
    """['/asr/text:=transcript', ...] -> {'/asr/text': 'transcript'} (ros2 bag play's --remap syntax)."""
    pairs = assignments(items, lambda item: BagError(f"--remap {item!r}: expected TOPIC:=INPUT, e.g. "
                                                     "/asr/text:=transcript"))
    return {(topic if topic.startswith("/") else "/" + topic): target for topic, target in pairs.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m ddvlm_ros.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag", help="a rosbag2 folder (mcap or sqlite3): python -m ddvlm_ros.bag, or ros2 bag record")
    ap.add_argument("--model-dir", default="", help="checkpoint the node loads (default: the embedded one)")
    ap.add_argument("--speed", type=float, default=1.0, help="bag time divided by this (> 0; e.g. 4: 4x faster)")
    ap.add_argument("--captioner", default="none",
                    help="the node's captioner parameter: none | cue | qwen (qwen: --param captioner_model_dir:=DIR)")
    ap.add_argument("--remap", action="append", default=[], metavar="TOPIC:=INPUT",
                    help=f"play a bag topic into a node input ({', '.join(INPUTS)}); repeatable")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="a node parameter, as ros2 run -p (e.g. quantized:=true, compile:=true); repeatable")
    ap.add_argument("--labels", help="gold labels: JSON by utterance key (a side file's format; default: the bag's "
                    "side file if any), or time intervals, .csv/.tsv (start,end,label[,speaker]: seconds from the "
                    "bag's start) or an ELAN .eaf file (ddvlm_ros/time_labels.py)")
    ap.add_argument("--labels-tier", default="", metavar="TIERS", help="with an ELAN .eaf --labels: its tiers of "
                    "labels, comma-separated (default: every tier whose annotations are all labels)")
    ap.add_argument("--answers", help="write one JSON line per replayed utterance with its answers (and one per "
                    "turn that only gave context: the robot's)")
    ap.add_argument("--elan", metavar="OUT_EAF", help="write the answers as ELAN tiers per speaker (transcript, "
                    "emotion, confidence at each utterance's span; the robot's turns: transcript), into a copy of "
                    "an .eaf --labels if given (ddvlm_ros/elan.py)")
    ap.add_argument("--record", metavar="OUT_BAG", help="write a bag: the replayed messages + /emotion answers (+ the "
                    "voices' hri_msgs/Expression, with ros4hri)")
    ap.add_argument("--live", action="store_true", help="print a table row per answer")
    ap.add_argument("--max-in-flight", type=int, default=0,
                    help="hold back utterances while this many are unanswered (0: pure bag timing)")
    ap.add_argument("--report", help="write Markdown here and JSON next to it")
    ap.add_argument("--title", default="Bag replay through the emotion node", help="heading of the --report")
    args = ap.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    intervals = None  # the annotator's time intervals, when --labels gives them: labels then come by time
    if args.labels_tier and Path(args.labels or "").suffix.lower() != ".eaf":
        ap.error("--labels-tier names tiers of an ELAN .eaf file given as --labels")
    try:
        remaps = parse_remaps(args.remap)
        if args.labels and Path(args.labels).suffix.lower() in TIME_LABEL_SUFFIXES:
            intervals, labels = load_intervals(args.labels, [t for t in args.labels_tier.split(",") if t]), {}
        else:
            labels = load_labels(args.labels or args.bag, side_file=not args.labels) if args.labels or \
                labels_path(args.bag).is_file() else {}
    except (BagError, TimeLabelsError) as e:
        ap.error(str(e))
    if args.record and Path(args.record).exists():
        ap.error(f"--record {args.record}: exists already, not overwriting")
    if args.elan and args.labels and Path(args.elan).resolve() == Path(args.labels).resolve():
        ap.error(f"--elan {args.elan}: the annotators' --labels file; the answers go into a copy, not into it")
    if not args.speed > 0:  # the bag's time line is divided by it
        ap.error(f"--speed must be > 0, got {args.speed}")
    if args.max_in_flight < 0:
        ap.error(f"--max-in-flight must be >= 0 (0: pure bag timing), got {args.max_in_flight}")
    if not labels and intervals is None:
        print(f"no labels ({labels_path(args.bag)} missing, no --labels): answers and latency only")
    params = {"model_dir": args.model_dir, "captioner": args.captioner, "input_timeout_s": 0.0}
    try:
        params.update(parse_params(args.param))
        in_bag = bag_topics(args.bag).types
    except (ValueError, BagError) as e:
        ap.error(str(e))
    if "ros4hri" not in params and has_ros4hri_voices(in_bag):  # a ROS4HRI robot's bag: its voices are its ASR
        params["ros4hri"] = True
        print(f"the bag has ROS4HRI voices ({VOICES}/tracked): replayed with ros4hri: true "
              "(--param ros4hri:=false: without them)")

    def live(key, msg):
        if args.live:
            gold = labels.get(key, "-")
            mark = "r" if REVISED_FLAG in msg.flags else "*" if msg.refined else " "
            print(f"{key:<22} {msg.speaker_id[:12]:<12} {msg.speaker_token:<5} {msg.top_label:<9} "
                  f"{msg.confidence:5.2f} {mark}  gold {gold:<9} {msg.latency_ms:7.1f} ms", flush=True)

    def on_final(key, span, speaker):
        if intervals is not None and (label := label_for(span, speaker, intervals)) is not None:
            labels[key] = label

    if args.live:
        print(f"{'utterance':<22} {'speaker':<12} {'tok':<5} {'emotion':<9} {'conf':>5} R  {'gold':<14} latency")
    try:
        result = replay(args.bag, params, args.speed, on_answer=live, max_in_flight=args.max_in_flight, remaps=remaps,
                        progress=not args.live, on_final=on_final)
    except (BagError, NodeConfigureError) as e:
        ap.error(str(e))
    score = result.score(labels)
    unlabelled = [k for k in result.finals if k not in labels]
    if labels and unlabelled and intervals is None:
        print(f"{len(unlabelled)} of {len(result.finals)} replayed utterances have no label "
              f"(their keys look like {unlabelled[0]!r}); they are not scored")
    by_time = "" if intervals is None else (
        f"labels by time: {len(labels)} of the {len(result.finals)} utterances overlap an interval of {args.labels} "
        f"(the others are not scored); {unmatched(list(result.spans.values()), intervals)} of its "
        f"{len(intervals)} intervals overlap no utterance")
    print(f"\nanswered {score['answered']}/{score['utterances']} utterances "
          f"({score['unanswered']} without answer, {score['refined']} refined) in {result.wall_s:.1f}s")
    notes = (by_time, result.recorded_types, result.camera_line(), result.transcript_line(), result.language_line(),
             result.confidence_line(), result.expression_line(), result.loop_line(),
             result.echo_line(), result.partial_line(), result.late_line(), result.copy_line())
    for note in notes:
        if note:
            print(note)
    if score.get("n"):
        print(f"WA-F1 {score['wa_f1']:.2f}  macro F1 {score['macro_f1']:.2f}  accuracy {score['accuracy']:.2f}  "
              f"latency p50 {score['latency_ms']['p50']:.1f} ms")
    if args.record:
        from rosbags.rosbag2 import WriterError

        try:
            out, left_out = write_recording(args.record, result)  # the bag as replay() read it: no second read
        except WriterError as e:
            ap.error(str(e))
        print(f"recording: {out}" + (f" ({left_out} messages of unknown types left out)" if left_out else ""))
    records = answer_records(result, labels)
    if args.answers:
        path = Path(args.answers)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(f"answers: {path}")
    if args.elan:
        from ddvlm_ros.elan import write_answers

        base = args.labels if args.labels and Path(args.labels).suffix.lower() == ".eaf" else None
        try:
            written = write_answers(records, args.elan, base)
        except (OSError, ValueError) as e:
            ap.error(f"--elan {args.elan}: {e}")
        context_only = {r["speaker_id"] for r in records if r.get("context_only")}
        answered = {speaker: n for speaker, n in written.items() if speaker not in context_only}
        n_utterances = sum(answered.values())
        print(f"ELAN tiers: {args.elan} ({n_utterances} utterance{'s' * (n_utterances != 1)} of {len(answered)} "
              f"speaker{'s' * (len(answered) != 1)}"
              + "".join(f", {n} turn{'s' * (n != 1)} of {speaker} (transcript only)" for speaker, n in written.items()
                        if speaker in context_only) + (f", into a copy of {base})" if base else ")"))
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = (f"At most {args.max_in_flight} utterances in flight (latency includes that queue)."
                 if args.max_in_flight else "")
        png = path.with_suffix(".confusion.png") if score.get("n") else None  # rows gold, columns predicted
        if png is not None:
            confusion_png(score["confusion"], png, f"{args.title[:50]}: {score['n']} utterances")
        path.write_text(report_markdown(args.title, score, args.bag, params, args.speed, extra, notes,
                                        png.name if png is not None else ""))
        path.with_suffix(".json").write_text(json.dumps({"bag": args.bag, "speed": args.speed, "params": params,
                                                         "remaps": remaps, "score": score, "wall_s": result.wall_s,
                                                         "node": result.node_status}, indent=1) + "\n")
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
