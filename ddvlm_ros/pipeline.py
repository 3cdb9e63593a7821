"""The emotion node's engine, free of ROS: conversations, a frame buffer, and two workers.

    utterance ─► inference worker: context += utterance; text-only prediction ─► publish (refined = False)
                   └─► caption worker: frames in the utterance window (as buffered then) ─► caption ─►
                       inference worker: fused prediction on its context ─► publish (refined = True)

An utterance placed before turns already answered (its transcript arrived late: ``ddvlm_core.arrival_order``)
gets those turns answered again from their contexts with it (``revise_answers``; flag ``answer-revised``).

The ROS callbacks only enqueue; the executor never runs a model. A slow, absent or crashing captioner
never delays or stops text results: captions run on their own thread, a caption later than
``caption_timeout_s`` is discarded and counted, an exception is logged and counted.
"""
from __future__ import annotations

import bisect
import math
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ddvlm_core.arrival_order import LATE_FLAG, REVISED_FLAG
from ddvlm_core.captioner import Frame, uniform_picks
from ddvlm_core.context import (LOOP_KEEP, REPETITION_LOOP_FLAG, UNPUNCTUATED_FLAG, UNPUNCTUATED_MIN_WORDS, Dialogue,
                                Turn, has_text, non_speech)
from ddvlm_core.duplicates import Delivery, original_of
from ddvlm_core.language import NOT_ENGLISH_FLAG, not_english
from ddvlm_core.partial_results import PARTIAL_FLAG, is_partial_of
from ddvlm_core.self_echo import SELF_ECHO_FLAG, echoed_turn
from ddvlm_core.tts_markup import strip_tts_markup
from ddvlm_ros.params import TURN_ENDS

DEFAULT_CONVERSATION = "default"
ROBOT_SPEAKER = "robot"  # speaker id of what the robot says (the node's robot_speech input)
CLOCK_SKEW_S = 1.0  # frames stamped further than this from the node's clock on arrival come from another clock
PUNCTUATION_WINDOW = 20  # the latest classified transcripts of 3+ words whose punctuation is watched
PUNCTUATION_MIN = 10  # of them, before the node judges; half of them without punctuation: the ASR does not punctuate
RATE_SLACK = 0.1  # share of a frame period by which two kept frames may be closer (stamp jitter): see FrameBuffer
LANGUAGE_WINDOW = 20  # the latest classified transcripts whose language is watched
LANGUAGE_MIN = 10  # of them, before the node judges; half of them not in English: the speech is not English
ECHO_WINDOW = 20  # the latest classified transcripts watched for echoes of the robot's speech
ECHO_RECUR = 3  # of them repeating the robot: the ASR hears the robot (people, in MELD: under 1 % of utterances)
PARTIAL_WINDOW = 20  # the latest classified transcripts watched for partial results (the one before, extended)
PARTIAL_RECUR = 3  # of them extending the turn before: the transcripts are partial results (people: under 1 %)
COPY_WINDOW = 20  # the latest transcripts watched for copies (the same transcript delivered twice)
COPY_RECUR = 3  # of them copies: transcripts keep coming twice
RECENT_DELIVERIES = 8  # per conversation: the latest transcripts a new one is compared with for a copy
CUT_WINDOW = 20  # the latest captioned utterance windows watched for a start that had left the frame buffer
CUT_RECUR = 3  # of them cut short: frame_buffer_s is too short for these utterances and this ASR's delay
QUOTE_CHARS = 60  # of a person's words quoted in the log and the diagnostics (quote_speech)
LOW_CONFIDENCE_FLAG = "transcript-low-confidence"  # the ASR's confidence in it is below asr_min_confidence


class RecentShare:
    """Which of the latest ``window`` items had some property, and whether that holds of the transcripts: at least
    half of them had it (``minimum`` items at least), or, with ``recur``, ``recur`` of them at least (a rarer fault,
    told by a few). Thread-safe enough for one writer and readers that copy."""

    def __init__(self, window: int, minimum: int = 0, recur: int = 0):
        self.recent: deque = deque(maxlen=window)
        self.minimum, self.recur = minimum, recur

    def add(self, has: bool) -> bool:
        """Record one item; True when this one made ``holds`` start to hold."""
        was = self.holds()
        self.recent.append(bool(has))
        return self.holds() and not was

    def counts(self) -> tuple[int, int]:
        """(how many of the latest have it, how many are kept)."""
        recent = list(self.recent)  # a copy: the inference worker appends while diagnostics read
        return sum(recent), len(recent)

    def holds(self) -> bool:
        have, n = self.counts()
        return have >= self.recur if self.recur else n >= self.minimum and 2 * have >= n


@dataclass
class UtteranceIn:
    conversation_id: str
    utterance_id: str
    speaker_id: str
    text: str | bytes
    start: float  # seconds (ROS time)
    end: float
    received: float  # monotonic seconds when the transcript arrived
    header: Any = None  # the transcript's header, copied to the output
    voice_id: str = ""  # ROS4HRI voice that spoke it ('' = another input)
    stream_id: str = ""  # the id its partial (streaming) results had, when the final one was given another
    language: str = ""  # the ASR's language tag, e.g. "en-GB" (ROS4HRI's LiveSpeech.locale: "en_GB"; '' = not given)
    flags: tuple[str, ...] = ()  # what the pipeline found of it in its dialogue (an echo of the robot): on every answer
    end_stamped: bool = False  # ``end`` is the message's stamp (False: when it arrived): it may place it before others
    source: str = ""  # the input it came on ("transcript", "utterance", "voices"): tells a copy of a transcript
    said_until: float | None = None  # when its words ended, estimated for one without an end stamp (``end``: when it
    # came; ddvlm_core.speech_timing); None: at ``end``
    heard: float | None = None  # ROS time when it came (None: the pipeline's clock when it is answered): the silence
    # before it is measured to it (idle_timeout_s), not to when the inference thread comes to it
    asr_confidence: float = 0.0  # the ASR's confidence in the text, in (0, 1]; 0 = not given

    @property
    def window(self) -> tuple[float, float]:
        """Its camera window: (start, end) of its words, in seconds (ROS time)."""
        return self.start, self.end if self.said_until is None else self.said_until


@dataclass
class Result:
    utterance: UtteranceIn
    prediction: Any  # EmotionPrediction
    refined: bool
    latency_ms: float


@dataclass
class Stats:
    utterances: int = 0
    published: int = 0
    refined: int = 0
    rejected: int = 0  # bad transcripts (not UTF-8, not text ...)
    dropped_utterances: int = 0  # queue full
    dropped_at_stop: int = 0  # utterances still queued when the pipeline stopped (deactivate): never answered
    frames: int = 0
    frames_dropped_old: int = 0
    frames_thinned: int = 0  # not kept: closer than 1 / frame_rate_hz to a kept frame
    frames_dropped_future: int = 0
    caption_errors: int = 0
    caption_timeouts: int = 0
    caption_prefetch_hits: int = 0  # final utterances whose caption was made while they were spoken
    caption_frames_from: Counter = field(default_factory=Counter)  # "camera" | "body" | "face" -> captions made
    windows_without_frames: int = 0  # final utterances (with a captioner) whose window gave no frame to caption
    windows_cut_short: int = 0  # final windows whose start had left the frame buffer when the transcript came
    window_cut_last: tuple[float, float, int] = (0.0, 0.0, 0)  # the latest: seconds lost, its length, buffer needed
    window_cut_recent: RecentShare = field(default_factory=lambda: RecentShare(CUT_WINDOW, recur=CUT_RECUR))
    frame_window_miss: str = ""  # why the last final window gave none while the camera sent frames ('' = it gave)
    conversations_reset: int = 0  # idle past idle_timeout_s: the next utterance started a new context
    resets_requested: int = 0  # reset() calls (the node's reset_conversation service)
    time_jumps_back: int = 0  # ROS time went back (a bag played again): frames and contexts started afresh
    conversations_forgotten: int = 0  # dropped from memory (idle, or the least recently active past the cap)
    speaker_tokens_reused: int = 0  # a 10th speaker in a conversation took the least recently heard one's token
    context_only: int = 0  # utterances of context_only_speakers: added to their dialogue, not classified
    non_speech: int = 0  # transcripts of no speech (empty, Whisper's [BLANK_AUDIO], (music)): skipped, not utterances
    unpunctuated: int = 0  # classified transcripts of 3+ words without sentence punctuation (flagged)
    unpunctuated_recent: RecentShare = field(default_factory=lambda: RecentShare(PUNCTUATION_WINDOW, PUNCTUATION_MIN))
    repetition_loops: int = 0  # classified transcripts in which the ASR looped (flagged transcript-repetition-loop)
    not_english: int = 0  # classified transcripts in another language than English (flagged transcript-not-english)
    not_english_why: str = ""  # what said so of the latest of them: "language tag 'ja'", "Cyrillic script"
    not_english_recent: RecentShare = field(default_factory=lambda: RecentShare(LANGUAGE_WINDOW, LANGUAGE_MIN))
    self_echoes: int = 0  # classified transcripts repeating the robot's latest words (flagged transcript-echoes-robot)
    self_echo_last: tuple[str, str] = ("", "")  # the latest of them and the robot's turn it repeated
    self_echoes_dropped: int = 0  # of them, dropped (drop_self_echoes): no answer, no turn of the dialogue
    self_echo_recent: RecentShare = field(default_factory=lambda: RecentShare(ECHO_WINDOW, recur=ECHO_RECUR))
    partial_results: int = 0  # classified transcripts extending the one before (flagged transcript-extends-previous)
    partial_last: tuple[str, float, str] = ("", 0.0, "")  # the latest of them, how long after, the turn it extended
    partial_recent: RecentShare = field(default_factory=lambda: RecentShare(PARTIAL_WINDOW, recur=PARTIAL_RECUR))
    copies_dropped: int = 0  # transcripts delivered a second time (ddvlm_core.duplicates): no answer, no turn
    copy_last: tuple[str, str, str] = ("", "", "")  # the latest of them: its text, its input, the original's input
    copy_recent: RecentShare = field(default_factory=lambda: RecentShare(COPY_WINDOW, recur=COPY_RECUR))
    late_transcripts: int = 0  # classified transcripts placed before turns that ended after them (arrived late)
    late_last: tuple[int, float] = (0, 0.0)  # the latest of them: how many turns it went before, ended how long before
    revised: int = 0  # answers published again because a late transcript went before their turn (answer-revised)
    asr_confidences: deque = field(default_factory=lambda: deque(maxlen=200))  # the latest classified transcripts'
    #                                                                             confidences, where the ASR gave one
    low_confidence: int = 0  # classified transcripts below asr_min_confidence (flagged transcript-low-confidence)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    last_error: str = ""


class FrameBuffer:
    """Frames of the last ``keep_s`` seconds, ordered by stamp (like message_filters.Cache).

    Frames stamped further than ``future_tolerance_s`` ahead of the newest accepted frame are refused
    (clock errors), frames older than the kept span are dropped; both are counted in ``stats``. With
    ``max_rate_hz`` > 0 a frame closer than (1 - RATE_SLACK) / max_rate_hz to a kept one is not kept (counted
    as thinned): a caption samples a few frames per utterance, and 10 s of a 30 Hz 720p camera is 0.8 GB of
    messages. The slack lets a camera at max_rate_hz keep every frame although its stamps jitter (with a full
    period as the gap, a 5 Hz camera lost 1 frame in 5 to float rounding alone, about 1 in 3 with 5 ms of
    jitter); a faster camera keeps every k-th frame, k the least with k / camera_hz >= (1 - RATE_SLACK) /
    max_rate_hz (a 30 Hz camera: every 6th, 5 Hz).
    """

    def __init__(self, keep_s: float, stats: Stats, future_tolerance_s: float = 5.0, max_rate_hz: float = 0.0):
        self.keep_s, self.stats, self.future_tolerance_s = keep_s, stats, future_tolerance_s
        self.min_gap_s = (1.0 - RATE_SLACK) / max_rate_hz if max_rate_hz > 0 else 0.0
        self._stamps: list[float] = []
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self.arrival_offset_s: float | None = None  # stamp - the node's clock, for the last frame kept
        self.dropped_until: float | None = None  # the newest stamp of a frame dropped as older than the kept span
        self.future_offset_s: float | None = None  # stamp - reference of the last frame dropped as future, if
        # no frame was kept after it

    def add(self, stamp: float, item: Any, now: float | None = None) -> bool:
        with self._lock:
            newest = self._stamps[-1] if self._stamps else None
            reference = now if now is not None else newest
            if reference is not None and stamp > reference + self.future_tolerance_s:
                self.stats.frames_dropped_future += 1
                self.future_offset_s = stamp - reference
                return False
            if newest is not None and stamp < newest - self.keep_s:
                self.stats.frames_dropped_old += 1
                self._dropped(stamp)
                return False
            i = bisect.bisect_right(self._stamps, stamp)
            if any(abs(stamp - self._stamps[j]) < self.min_gap_s for j in (i - 1, i) if 0 <= j < len(self._stamps)):
                self.stats.frames_thinned += 1
                return False
            self._stamps.insert(i, stamp)
            self._items.insert(i, item)
            self.stats.frames += 1
            self.future_offset_s = None
            if now is not None:
                self.arrival_offset_s = stamp - now
            cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.keep_s)
            if cut:
                self._dropped(self._stamps[cut - 1])
                del self._stamps[:cut], self._items[:cut]
                self.stats.frames_dropped_old += cut
            return True

    def _dropped(self, stamp: float) -> None:
        self.dropped_until = stamp if self.dropped_until is None else max(self.dropped_until, stamp)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._items.clear()
            self.dropped_until = None

    def window(self, start: float, end: float) -> list[tuple[float, Any]]:
        with self._lock:
            lo, hi = bisect.bisect_left(self._stamps, start), bisect.bisect_right(self._stamps, end)
            return list(zip(self._stamps[lo:hi], self._items[lo:hi]))

    def lost_s(self, start: float, end: float) -> float:
        """How much of the window [start, end] had left the buffer: from its start to the newest frame dropped as
        too old (0 when none in it was)."""
        with self._lock:
            until = self.dropped_until
        return 0.0 if until is None or until < start else min(until, end) - start

    def span(self) -> tuple[float, float] | None:
        """(oldest, newest) stamp buffered, None when empty."""
        with self._lock:
            return (self._stamps[0], self._stamps[-1]) if self._stamps else None

    def __len__(self) -> int:
        return len(self._stamps)


MAX_PREFETCHED = 256  # streaming captions waiting for their final utterance
MAX_PERSON_BUFFERS = 32  # crops of people's bodies and faces buffered (ROS4HRI), each as long as the camera's


@dataclass
class Answered:
    """A turn the pipeline answered, with what it needs to answer it again (``EmotionPipeline._revise``)."""

    turn: Turn
    utterance: UtteranceIn  # as published (its flags included)
    caption: Any = None  # the caption of its fused answer (None: text only so far)


class Conversation:
    def __init__(self, max_turns: int, now: float):
        self.dialogue = Dialogue(max_turns)
        self.max_turns = max_turns
        self.last_active = now  # on the pipeline's clock
        self.latest: tuple[Turn, float] | None = None  # the latest turn added and its end (ROS time)
        self.deliveries: deque[Delivery] = deque(maxlen=RECENT_DELIVERIES)  # the latest transcripts, as they came
        self._answered: dict[int, Answered] = {}  # id(turn) -> its answer's inputs (the entry keeps the turn alive)

    def remember(self, turn: Turn, utterance: UtteranceIn) -> None:
        """Keep what answered ``turn``; entries of turns gone from the dialogue are let go once they pile up."""
        self._answered[id(turn)] = Answered(turn, utterance)
        if len(self._answered) > 2 * self.max_turns + 8:
            for key in [k for k, a in self._answered.items() if self.dialogue.index(a.turn) is None]:
                del self._answered[key]

    def answered(self, turn: Turn) -> Answered | None:
        found = self._answered.get(id(turn))
        return found if found is not None and found.turn is turn else None


class EmotionPipeline:
    def __init__(self, recognizer, publish: Callable[[Result], None], captioner=None,
                 decode_frame: Callable[[Any], Any] = lambda x: x, max_turns: int = 32, idle_timeout_s: float = 120.0,
                 frame_buffer_s: float = 20.0, frame_rate_hz: float = 0.0, frames_per_window: int = 4,
                 caption_timeout_s: float = 10.0,
                 queue_size: int = 256, max_conversations: int = 1000,
                 log: Callable[[str, str], None] = lambda level, msg: None,
                 thread_setup: dict[str, Callable[[], None]] | None = None,
                 clock: Callable[[], float] = time.monotonic, context_only_speakers: str = "",
                 drop_self_echoes: bool = False, quote_speech: bool = True, revise_answers: bool = True,
                 asr_min_confidence: float = 0.0, end_unpunctuated_turns: str = "never"):
        self.recognizer, self.publish, self.captioner = recognizer, publish, captioner
        self.decode_frame, self.log = decode_frame, log
        self.max_turns, self.idle_timeout_s = max_turns, idle_timeout_s
        self.frames_per_window, self.caption_timeout_s = frames_per_window, caption_timeout_s
        self.stats = Stats()
        self.frames = FrameBuffer(frame_buffer_s, self.stats, max_rate_hz=frame_rate_hz)
        self.frame_buffer_s, self.frame_rate_hz = frame_buffer_s, frame_rate_hz
        self.person_frames: dict[str, FrameBuffer] = {}  # "body/<id>" | "face/<id>" -> that crop's frames
        self._person_stats = Stats()  # their counts (the camera's are the diagnostics')
        self.crops_of: Callable[[str], list[str]] = lambda voice: []  # a voice -> its person's crop keys, best first
        self.conversations: dict[str, Conversation] = {}
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._captions: queue.Queue = queue.Queue(maxsize=queue_size)
        self._threads: list[threading.Thread] = []
        self._running = False
        self._generation = 0  # start() number: a worker of an earlier one exits after the job it is running
        self._prefetched: dict[tuple[str, str], tuple[float, float, object]] = {}
        self._partials: dict[tuple[str, str], UtteranceIn] = {}  # the newest partial result of each stream whose
        self._partials_lock = threading.Lock()  # streaming caption is queued: one caption job per stream at a time
        self.prefetch_coverage = 0.8  # reuse a streaming caption that covers this much of the final window
        self.max_conversations = max_conversations  # contexts kept in memory at most
        self._dropped_idle: dict[str, float] = {}  # conversation -> when it last spoke, for those dropped idle
        self.thread_setup = thread_setup or {}  # worker name -> called first on that worker's thread
        self.clock = clock  # seconds; measures a conversation's silence (the node's: ROS time, a bag's under sim time)
        self.context_only_speakers = context_only_speakers  # comma-separated speaker ids: context, not classified
        self.drop_self_echoes = drop_self_echoes  # an echo of the robot gets no answer and leaves the context
        self.robot_speaker = ""  # speaker of the node's robot_speech input (ROBOT_SPEAKER while on): context only too
        self.quote_speech = quote_speech  # people's words in logs and diagnostics (False: how many words only)
        self.revise_answers = revise_answers  # answer again the turns a late transcript goes before
        self.asr_min_confidence = asr_min_confidence  # a transcript the ASR gave less confidence is flagged
        self.end_unpunctuated_turns = end_unpunctuated_turns  # TURN_ENDS: prompts end turns without punctuation

    @property
    def end_unpunctuated_turns(self) -> str:
        return self._turn_ends

    @end_unpunctuated_turns.setter
    def end_unpunctuated_turns(self, mode: str) -> None:
        if mode not in TURN_ENDS:
            raise ValueError(f"end_unpunctuated_turns must be one of {TURN_ENDS}, got {mode!r}")
        self._turn_ends = mode
        self._end_turns()

    def _end_turns(self) -> None:
        """Have the recognizer end each turn without punctuation with a full stop in its prompts
        (``EmotionRecognizer.end_unpunctuated_turns``): always, never, or (auto) while the ASR does not punctuate
        (``asr_unpunctuated``), which a transcript that keeps MELD's punctuation never turns on."""
        mode = self._turn_ends
        self.recognizer.end_unpunctuated_turns = mode == "always" or (mode == "auto" and self.asr_unpunctuated())

    def quote(self, text: str) -> str:
        """What a person said, as the log and the diagnostics show it: quoted (QUOTE_CHARS characters at most) while
        ``quote_speech``, else how many words it had (a study whose participants' speech must stay off the disk)."""
        if self.quote_speech:
            return repr(text[:QUOTE_CHARS])
        n = len(text.split())
        return f"<{n} word{'s' * (n != 1)}>"

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._generation += 1
        self._running = True
        workers = [(self._inference_loop, "ddvlm-inference")]
        if self.captioner is not None:
            workers.append((self._caption_loop, "ddvlm-caption"))
        self._threads = [threading.Thread(target=loop, args=(self._generation,), name=name, daemon=True)
                         for loop, name in workers]
        for t in self._threads:
            t.start()

    def _current(self, generation: int) -> bool:
        """Whether a worker of ``generation`` is to go on (False once its pipeline stopped or restarted)."""
        return self._running and self._generation == generation

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers after the jobs they are running. The jobs still queued are dropped and counted (an
        answer minutes late, after a deactivate, would mislead), so a restart begins with empty queues. A worker
        still busy after ``timeout`` (a long caption) finishes its job and exits without taking another."""
        self._running = False
        for q in (self._jobs, self._captions):
            try:
                q.put_nowait(None)  # wakes a worker waiting for a job
            except queue.Full:
                pass
        for t in self._threads:
            t.join(timeout)
        busy = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        if busy:
            self.log("warn", f"{', '.join(busy)} still busy {timeout} s after stop: it exits after its job")
        dropped = {"text": 0, "refine": 0, "final": 0}
        for q in (self._jobs, self._captions):
            while True:
                try:
                    job = q.get_nowait()
                except queue.Empty:
                    break
                self._discard(job, dropped)
                q.task_done()
        if dropped["text"] or dropped["refine"] or dropped["final"]:
            self.log("warn", f"stopped with {dropped['text']} utterances and {dropped['refine'] + dropped['final']} "
                             "refinements queued: dropped")

    def _discard(self, job, dropped: dict[str, int] | None = None) -> None:
        """A job left unrun by a stop: counted, and a caller waiting in ``call`` is told."""
        if job is None:
            return
        kind, payload = job
        if kind == "text":
            self.stats.dropped_at_stop += 1
        elif kind == "call":
            payload.cancel()
        elif kind == "prefetch":
            with self._partials_lock:
                self._partials.pop(payload, None)
        if dropped is not None and kind in dropped:
            dropped[kind] += 1

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the inference worker, after the jobs queued before it, and return its result (its
        exception is raised here). For work that must see the worker's torch threads, e.g. compiling: inductor
        generates serial CPU kernels when it compiles on a thread with 1 torch thread."""
        done, box = threading.Event(), {}

        def job() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e
            finally:
                done.set()

        def cancel() -> None:
            box["error"] = RuntimeError("the pipeline stopped before the inference worker ran the call")
            done.set()

        job.cancel = cancel

        self._jobs.put(("call", job), timeout=timeout)
        if not done.wait(timeout):
            raise TimeoutError(f"the inference worker did not run the call within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def queue_depths(self) -> dict[str, int]:
        return {"inference": self._jobs.qsize(), "caption": self._captions.qsize()}

    def idle(self) -> bool:
        return self._jobs.unfinished_tasks == 0 and self._captions.unfinished_tasks == 0

    # ---- inputs (called from ROS callbacks: enqueue only) -------------------------------------
    def submit(self, utterance: UtteranceIn) -> bool:
        try:
            self._jobs.put_nowait(("text", utterance))
            return True
        except queue.Full:
            self.stats.dropped_utterances += 1
            self.log("warn", f"inference queue full: utterance {utterance.utterance_id} dropped")
            return False

    def prefetch(self, partial: UtteranceIn) -> None:
        """Streaming: caption the frames of an utterance that is still being spoken (a non-final ASR
        result), so the final result's refinement does not wait for the captioner. Best effort. An ASR sends
        partial results faster than a captioner captions (every word, for ROS4HRI's incremental speech): one
        job per stream waits at a time and captions the newest partial result when its turn comes."""
        if self.captioner is None or self.context_only(partial.speaker_id) or non_speech(partial.text):
            return
        key = self._stream_key(partial)
        with self._partials_lock:
            queued = key in self._partials
            self._partials[key] = partial
            if queued:
                return
            try:
                self._captions.put_nowait(("prefetch", key))
            except queue.Full:
                del self._partials[key]

    def reset(self, conversation_id: str = "") -> str:
        """Forget the dialogue context of ``conversation_id`` ('' = every conversation), so that its next
        utterance starts a new one with new speaker tokens. The reset is queued behind the utterances submitted
        before it: they keep the context they were spoken in. Returns what will be forgotten, in words;
        RuntimeError if the inference queue is full."""
        try:
            job = self._queue_reset(conversation_id, "on request")
        except queue.Full:
            raise RuntimeError("the inference queue is full; try again") from None
        self.stats.resets_requested += 1
        with self._jobs.mutex:  # utterances still waiting ahead of this reset
            ahead = 0
            for queued in self._jobs.queue:
                if queued is job:
                    break
                ahead += queued is not None and queued[0] == "text"
        what = f"conversation {conversation_id!r}" if conversation_id else "every conversation"
        return f"{what} starts over" + (f" after the {ahead} utterances queued before this call" if ahead > 0 else "")

    def time_jumped_back(self, seconds: float) -> None:
        """ROS time went back ``seconds`` (a bag played again, or looped, under use_sim_time). The buffered
        frames and the dialogue contexts belong to a timeline that will not come again: the frames go at once
        (else every new frame would be older than the kept span), the contexts after the utterances queued
        before the jump (as ``reset('')``), and the streaming captions with them."""
        self.frames.clear()
        self.person_frames.clear()
        self._prefetched.clear()
        with self._partials_lock:
            self._partials.clear()
        self.stats.time_jumps_back += 1
        try:
            self._queue_reset("", f"as ROS time went back {seconds:.1f} s")
        except queue.Full:
            self.log("error", "ROS time went back but the inference queue is full: dialogue contexts kept")
        self.log("warn", f"ROS time went back {seconds:.1f} s (a bag played again?): camera frames and dialogue "
                         "contexts start afresh")

    def _queue_reset(self, conversation_id: str, why: str) -> tuple:
        """Queue the forgetting of ``conversation_id``'s context ('' = all) behind the utterances queued so far;
        returns the job (queue.Full when the inference queue is)."""
        job = ("reset", (conversation_id, why))
        self._jobs.put_nowait(job)
        return job

    def context_only(self, speaker_id: str) -> bool:
        """Whether this speaker's utterances only join the context (``context_only_speakers``, e.g. the robot, and
        ``robot_speaker``)."""
        speaker = (speaker_id or "").strip()
        return bool(speaker) and (speaker == self.robot_speaker
                                  or speaker in {s.strip() for s in self.context_only_speakers.split(",")})

    @staticmethod
    def _stream_key(u: UtteranceIn) -> tuple[str, str]:
        """Which streaming caption an utterance's results share: its id, or its speaker's while the ASR gives none."""
        return (u.conversation_id, u.stream_id or u.utterance_id or f"speaker:{u.speaker_id}")

    def add_frame(self, stamp: float, frame: Any, now: float | None = None) -> bool:
        return self.frames.add(stamp, frame, now)

    def add_person_frame(self, key: str, stamp: float, frame: Any, now: float | None = None) -> bool:
        """A crop of a person's body or face (``key`` "body/<id>" or "face/<id>"), kept as camera frames are; the
        buffers of MAX_PERSON_BUFFERS crops at most, those that sent nothing for longest go first."""
        buffer = self.person_frames.get(key)
        if buffer is None:
            buffer = self.person_frames[key] = FrameBuffer(self.frame_buffer_s, self._person_stats,
                                                           max_rate_hz=self.frame_rate_hz)
            while len(self.person_frames) > MAX_PERSON_BUFFERS:
                stale = min(self.person_frames, key=lambda k: (self.person_frames[k].span() or (0.0, -math.inf))[1])
                del self.person_frames[stale]
        return buffer.add(stamp, frame, now)

    def _window_frames(self, utt: UtteranceIn) -> tuple[list, float, str]:
        """(the frames of the utterance's window, seconds of it that had left their buffer, where they come from):
        a voice's person's crops, body first, when they have frames in the window (``crops_of``); else the
        camera's."""
        for key in self.crops_of(utt.voice_id) if utt.voice_id else ():
            buffer = self.person_frames.get(key)
            raw = buffer.window(*utt.window) if buffer is not None else []
            if raw:
                return raw, buffer.lost_s(*utt.window), key.partition("/")[0]
        return self.frames.window(*utt.window), self.frames.lost_s(*utt.window), "camera"

    # ---- workers ---------------------------------------------------------------------------------
    def _jobs_of(self, jobs: queue.Queue, generation: int):
        """The jobs a worker of ``generation`` takes from ``jobs``, each marked done when the worker asks for the
        next (so ``idle()`` waits for its handling); ends once the pipeline stops or restarts, and a job taken
        after that is dropped as stop() drops the ones still queued."""
        while self._current(generation):
            job = jobs.get()
            try:
                if job is None:  # stop()'s wake-up, maybe an earlier stop's
                    continue
                if not self._current(generation):
                    self._discard(job)
                    continue
                yield job
            finally:
                jobs.task_done()

    def _inference_loop(self, generation: int) -> None:
        self.thread_setup.get("inference", lambda: None)()
        for kind, payload in self._jobs_of(self._jobs, generation):
            try:
                if kind == "text":
                    self._text(payload)
                elif kind == "call":
                    payload()
                elif kind == "reset":
                    self._reset(*payload)
                else:
                    self._refine(*payload)
            except Exception as e:  # noqa: BLE001 - a bad job must never stop the worker
                self.stats.last_error = f"{type(e).__name__}: {e}"
                self.log("error", f"inference failed: {self.stats.last_error}")

    def _conversation(self, conversation_id: str, heard: float | None = None) -> Conversation:
        """The conversation an utterance that came at ROS time ``heard`` (None: now) joins; a new one when it was
        silent for longer than ``idle_timeout_s`` before. ``heard``, not now: under a bag played faster
        (``use_sim_time``) the clock runs on while the inference thread works through a backlog, and the silence
        before an utterance would read longer than it was, up to a new context in the middle of a dialogue."""
        conv = self.conversations.get(conversation_id)
        now = self.clock() if heard is None else heard
        last = conv.last_active if conv is not None else self._dropped_idle.pop(conversation_id, None)
        if last is not None and self.idle_timeout_s > 0 and now - last > self.idle_timeout_s:
            self.stats.conversations_reset += 1
            self.log("info", f"conversation {conversation_id!r} idle for {now - last:.0f}s: new context")
            conv = None
        if conv is None:
            self._forget_conversations(now)
            conv = self.conversations[conversation_id] = Conversation(self.max_turns, now)
        conv.last_active = now
        self.conversations[conversation_id] = self.conversations.pop(conversation_id)  # most recent last
        return conv

    def _forget_conversations(self, now: float) -> None:
        """Bounded memory on a node that runs for weeks (new voice ids every day): drop conversations idle
        past ``idle_timeout_s`` (their next utterance would start a new context anyway), then the least
        recently active beyond ``max_conversations``; their streaming captions go with them."""
        idle = [c for c, conv in self.conversations.items()
                if self.idle_timeout_s > 0 and now - conv.last_active > self.idle_timeout_s]
        excess = len(self.conversations) - len(idle) - (self.max_conversations - 1)
        oldest = [c for c in self.conversations if c not in idle][:max(0, excess)]
        for c in idle:  # its next utterance is an idle restart, said and counted as one (a few bytes each)
            self._dropped_idle[c] = self.conversations[c].last_active
        while len(self._dropped_idle) > self.max_conversations:
            self._dropped_idle.pop(next(iter(self._dropped_idle)))
        for c in idle + oldest:
            del self.conversations[c]
            self.stats.conversations_forgotten += 1
        if idle or oldest:
            gone = set(idle + oldest)
            for key in [k for k in list(self._prefetched) if k[0] in gone]:  # the caption thread writes it too
                self._prefetched.pop(key, None)

    def _reset(self, conversation_id: str, why: str) -> None:
        gone = [c for c in self.conversations if not conversation_id or c == conversation_id]
        for c in [c for c in self._dropped_idle if not conversation_id or c == conversation_id]:
            del self._dropped_idle[c]  # its next utterance starts anew because of this reset, not of its silence
        turns = sum(len(self.conversations.pop(c).dialogue) for c in gone)
        self.log("info", f"reset {why}: {len(gone)} conversation(s) forgotten ({turns} utterances of context)")

    def _text(self, utt: UtteranceIn) -> None:
        robot = self.context_only(utt.speaker_id)  # e.g. the robot's own turn: context for the next human one
        text = strip_tts_markup(utt.text) if robot and isinstance(utt.text, str) else utt.text  # its TTS input
        if non_speech(text) or (text != utt.text and not has_text(text)):  # nothing said; or TTS markup alone
            self.stats.non_speech += 1  # not an utterance, and no turn of the dialogue
            return
        conv = self._conversation(utt.conversation_id, utt.heard)
        if not robot and self._copy(conv, utt, text):
            return
        self.stats.utterances += 1
        reused = conv.dialogue.speakers.reused
        try:
            turn = conv.dialogue.new_turn(utt.speaker_id or None, text, utt.language)
        except (ValueError, TypeError) as e:
            self.stats.rejected += 1
            self.log("warn", f"utterance {utt.utterance_id!r} skipped: {e}")
            return
        self.stats.speaker_tokens_reused += conv.dialogue.speakers.reused - reused
        earlier = None if robot else self._earlier_version(conv, turn, utt.end)  # (its turn, how long before)
        conv.dialogue.append(turn, replacing=earlier[0] if earlier else None,
                             end=utt.end if utt.end_stamped else None)  # before the turns that ended after it
        turns = conv.dialogue.until(turn)  # its context: the turns up to it
        later = len(conv.dialogue) - len(turns)
        ended_before = conv.latest[1] - utt.end if later and conv.latest else 0.0
        if not later:
            conv.latest = (turn, utt.end)
        if robot:
            self.stats.context_only += 1
            return
        utt = self._watch_partial(earlier, turn, utt)
        utt = self._watch_late(later, ended_before, utt)
        utt = self._watch_confidence(utt)
        if self.context_only_speakers.strip() or self.robot_speaker:
            utt = self._watch_echo(utt, turns)
            if self.drop_self_echoes and SELF_ECHO_FLAG in utt.flags:  # the robot's words: no person's feeling
                conv.dialogue.take_back(turn)
                self.stats.self_echoes_dropped += 1
                return
        try:
            prediction = self.recognizer.predict(turns)
        except Exception as e:  # noqa: BLE001 - left in the context, it would fail every later answer there too
            conv.dialogue.take_back(turn)
            self.stats.last_error = f"{type(e).__name__}: {e}"
            self.log("error", f"utterance {utt.utterance_id!r}: inference failed ({self.stats.last_error}); left "
                              "out of the dialogue context")
            return
        self._watch_punctuation(turns[-1].text, prediction.flags)
        self._watch_language(turns[-1], prediction.flags)
        self._watch_loops(turns[-1])
        self._publish(utt, prediction, refined=False)
        conv.remember(turn, utt)
        if later and self.revise_answers:
            self._revise(conv, conv.dialogue.turns[len(turns):])
        if self.captioner is not None:  # its frames as buffered now: a busy captioner must not see them dropped
            window = self._window_frames(utt)
            try:
                self._captions.put_nowait(("final", (utt, turns, time.monotonic(), window)))
            except queue.Full:
                self.stats.caption_timeouts += 1

    def _watch_punctuation(self, text: str, flags: tuple[str, ...]) -> None:
        """Count a transcript of 3+ words without punctuation (its answer's ``flags`` say so); the first time most
        of the latest ones have none, say so (the model learnt from punctuated text and scores far lower without
        it)."""
        if len(text.split()) < UNPUNCTUATED_MIN_WORDS:
            return
        missing = UNPUNCTUATED_FLAG in flags
        self.stats.unpunctuated += missing
        started = self.stats.unpunctuated_recent.add(missing)
        self._end_turns()
        if started:
            ended = (" The prompts now end each turn without punctuation with a full stop (end_unpunctuated_turns: "
                     "auto), which wins some of it back (reports/turn_ends.md).") if self._turn_ends == "auto" else ""
            self.log("warn", f"{self.punctuation_summary()}: the transcripts come without punctuation, and the "
                             "model, trained on punctuated subtitles, scores far lower on such text "
                             "(reports/replay_asr_noise.md): use an ASR that punctuates, or restore punctuation."
                             + ended)

    def asr_unpunctuated(self) -> bool:
        """Whether at least half of the latest transcripts of 3+ words (PUNCTUATION_MIN of them at least) have
        no sentence punctuation: an ASR that does not punctuate (MELD: under 1 % of such utterances)."""
        return self.stats.unpunctuated_recent.holds()

    def punctuation_summary(self) -> str:
        """'k of the latest n transcripts of 3+ words have no punctuation' ('' before any)."""
        missing, n = self.stats.unpunctuated_recent.counts()
        ended = "; the prompts end their turns with a full stop" if self.recognizer.end_unpunctuated_turns else ""
        return (f"{missing} of the latest {n} transcripts of {UNPUNCTUATED_MIN_WORDS}+ words "
                f"have no punctuation{ended}") if n else ""

    def _watch_language(self, turn: Turn, flags: tuple[str, ...]) -> None:
        """Count a transcript that is not English (its answer's ``flags`` say so; ``ddvlm_core.language`` says
        why: the ASR's tag or the script); the first time half of the latest ones are not, say so: the model reads
        English only."""
        other = NOT_ENGLISH_FLAG in flags
        if other:
            self.stats.not_english += 1
            self.stats.not_english_why = not_english(turn.text, turn.language)
        if self.stats.not_english_recent.add(other):
            self.log("warn", f"{self.language_summary()}: the model learnt English only (MELD), and its answers to "
                             f"other languages say nothing of the speaker; they carry the flag {NOT_ENGLISH_FLAG}. "
                             "Set the ASR to English, or leave such speech out")

    def _watch_confidence(self, utt: UtteranceIn) -> UtteranceIn:
        """The utterance, flagged when the ASR gave it a confidence below ``asr_min_confidence`` (words it may have
        misheard: the answer reads them as said); counted."""
        if not utt.asr_confidence:
            return utt
        self.stats.asr_confidences.append(utt.asr_confidence)
        if utt.asr_confidence >= self.asr_min_confidence:
            return utt
        self.stats.low_confidence += 1
        return replace(utt, flags=utt.flags + (LOW_CONFIDENCE_FLAG,))

    def confidence_summary(self) -> str:
        """'k of the latest n transcripts with an ASR confidence below t (p50 c)' ('' while the ASR gave none)."""
        given = sorted(self.stats.asr_confidences)  # a copy: the inference worker appends while diagnostics read
        if not given:
            return ""
        below = sum(c < self.asr_min_confidence for c in given)
        return (f"{below} of the latest {len(given)} transcripts with an ASR confidence below "
                f"{self.asr_min_confidence:g} (p50 {given[len(given) // 2]:.2f}); {self.stats.low_confidence} in all")

    def _watch_loops(self, turn: Turn) -> None:
        """Count a transcript in which the ASR looped (its repeats were cut); say so the first time."""
        if not turn.repeats_cut:
            return
        self.stats.repetition_loops += 1
        if self.stats.repetition_loops == 1:
            self.log("warn", f"the ASR repeated itself {turn.repeats_cut + LOOP_KEEP} times in one transcript "
                             f"({self.quote(turn.text)} ...), as Whisper does in a repetition loop: the repeats past "
                             f"{LOOP_KEEP} are cut and the answer carries the flag {REPETITION_LOOP_FLAG}. With "
                             "Whisper: condition_on_previous_text=False and a VAD keep it from looping")

    def _watch_echo(self, utt: UtteranceIn, turns: tuple[Turn, ...]) -> UtteranceIn:
        """The utterance, flagged when it repeats one of the robot's latest turns (``ddvlm_core.self_echo``); counted,
        and the first time ECHO_RECUR of the latest transcripts do, said: the ASR hears the robot's own speech."""
        robot = echoed_turn(turns, self.context_only)
        started = self.stats.self_echo_recent.add(robot is not None)
        if robot is None:
            return utt
        self.stats.self_echoes += 1
        self.stats.self_echo_last = (turns[-1].text, robot.text)
        if started:
            handled = ("they are dropped (drop_self_echoes)" if self.drop_self_echoes else
                       f"those answers carry the flag {SELF_ECHO_FLAG}")
            self.log("warn", f"{self.self_echo_summary()}: the ASR hears the robot's own speech, and the node would "
                             f"answer how a person feels from the robot's words; {handled}. Mute the ASR while the "
                             "robot speaks, or cancel the echo (AEC)")
        return replace(utt, flags=utt.flags + (SELF_ECHO_FLAG,))

    @staticmethod
    def _earlier_version(conv: Conversation, turn: Turn, end: float) -> tuple[Turn, float] | None:
        """The conversation's latest turn and how long before ``end`` it ended, when ``turn`` (ending at ``end``) is
        its next version, as an ASR's partial results follow each other (``ddvlm_core.partial_results``); else
        None."""
        if conv.latest is None or not conv.dialogue.turns or conv.dialogue.turns[-1] is not conv.latest[0]:
            return None
        latest, gap = conv.latest[0], end - conv.latest[1]
        return (latest, gap) if is_partial_of(latest, turn, gap) else None

    def _watch_partial(self, earlier: tuple[Turn, float] | None, turn: Turn, utt: UtteranceIn) -> UtteranceIn:
        """The utterance, flagged when its turn replaced an ``earlier`` version of it (an ASR's partial result, and
        how long before it ended); counted, and the first time PARTIAL_RECUR of the latest transcripts are such,
        said: the transcripts are partial results."""
        started = self.stats.partial_recent.add(earlier is not None)
        if earlier is None:
            return utt
        self.stats.partial_results += 1
        self.stats.partial_last = (turn.text, earlier[1], earlier[0].text)
        if started:
            self.log("warn", f"{self.partial_summary()}: the transcripts are an ASR's partial results, and the node "
                             "answers each from part of the words. Remap transcript to the ASR's final results "
                             "(ros-vosk: speech_recognition/final_result, not partial_result), or send ddvlm_msgs/"
                             f"Utterance with is_final false on partial results; such answers carry the flag "
                             f"{PARTIAL_FLAG}, and the context keeps the latest version")
        return replace(utt, flags=utt.flags + (PARTIAL_FLAG,))

    def _copy(self, conv: Conversation, utt: UtteranceIn, text) -> bool:
        """Whether the transcript is a copy of one of the conversation's latest (``ddvlm_core.duplicates``): then
        counted, and said the first time; else kept to compare the next ones with."""
        if not isinstance(text, str):
            return False
        delivery = Delivery(utt.source, utt.speaker_id, text, utt.end, utt.end_stamped, utt.received)
        original = original_of(conv.deliveries, delivery)
        self.stats.copy_recent.add(original is not None)
        if original is None:
            conv.deliveries.append(delivery)
            return False
        self.stats.copies_dropped += 1
        self.stats.copy_last = (text, utt.source, original.source)
        if self.stats.copies_dropped == 1:
            self.log("warn", f"{self.copy_summary()}: two publishers send the transcripts (`ros2 topic info -v`: the "
                             "ASR's node started twice, or a relay or bridge forwarding its topic while it publishes "
                             "there too), or one ASR reaches two inputs (its text on transcript and its Utterance on "
                             "utterance: set the unused one's topic to ''); each copy is dropped")
        return True

    def copy_summary(self) -> str:
        """'k transcripts came a second time and were dropped (the latest: ...)' ('' before any)."""
        if not self.stats.copies_dropped:
            return ""
        text, source, first = self.stats.copy_last
        where = f"on {source or 'its input'} again" if source == first else f"on {source}, first on {first}"
        return (f"{self.stats.copies_dropped} transcripts came a second time and were dropped (the latest: "
                f"{self.quote(text)} {where})")

    def transcripts_copied(self) -> bool:
        """Whether COPY_RECUR of the latest COPY_WINDOW transcripts were copies of one before."""
        return self.stats.copy_recent.holds()

    def _watch_late(self, later: int, ended_before: float, utt: UtteranceIn) -> UtteranceIn:
        """The utterance, flagged when it was placed before ``later`` turns of its dialogue that ended after it
        (``ddvlm_core.arrival_order``; the latest of them ``ended_before`` seconds after it); counted, and the first
        time said."""
        if not later:
            return utt
        self.stats.late_transcripts += 1
        self.stats.late_last = (later, ended_before)
        if self.stats.late_transcripts == 1:
            self.log("info", f"a transcript arrived after {later} turn(s) that ended after it ({ended_before:.1f} s "
                             "later), as transcripts of several ASRs (one per voice or microphone) do: it is placed "
                             "before them in the dialogue context by its end stamp and answered from the turns up to "
                             f"it; its answer carries the flag {LATE_FLAG} (the header stamp is the utterance's end)"
                             + (f"; the turns it went before are answered again with it in their context (flag "
                                f"{REVISED_FLAG})" if self.revise_answers else "; the turns it went before keep "
                                "their first answers (revise_answers: false)"))
        return replace(utt, flags=utt.flags + (LATE_FLAG,))

    def _revise(self, conv: Conversation, turns: tuple[Turn, ...]) -> None:
        """Answer ``turns`` again, each from the turns up to it: a late transcript has just gone before them, and
        their answers were read without it. The answers carry REVISED_FLAG and replace the earlier ones (same
        utterance, same header stamp); a turn with a fused answer is answered again with its caption."""
        for turn in turns:
            answered = conv.answered(turn)
            if answered is None:  # the robot's turn (context only): never answered
                continue
            try:
                prediction = self.recognizer.predict(conv.dialogue.until(turn), answered.caption)
            except Exception as e:  # noqa: BLE001 - its first answer stands
                self.stats.last_error = f"{type(e).__name__}: {e}"
                self.log("error", f"utterance {answered.utterance.utterance_id!r}: answering again failed "
                                  f"({self.stats.last_error})")
                continue
            self.stats.revised += 1
            utt = replace(answered.utterance, flags=answered.utterance.flags + (REVISED_FLAG,))
            self._publish(utt, prediction, refined=prediction.modalities != "text", revised=True)

    def late_summary(self) -> str:
        """'k transcripts placed before turns that ended after them (the latest: ...); j answers revised' ('' before
        any)."""
        if not self.stats.late_transcripts:
            return ""
        later, ended_before = self.stats.late_last
        return (f"{self.stats.late_transcripts} transcripts placed before turns that ended after them (the latest: "
                f"before {later} turn(s), the latest of which ended {ended_before:.1f} s after it); "
                f"{self.stats.revised} answers to those turns revised")

    def asr_partials(self) -> bool:
        """Whether PARTIAL_RECUR of the latest PARTIAL_WINDOW classified transcripts extended the turn before."""
        return self.stats.partial_recent.holds()

    def partial_summary(self) -> str:
        """'k of the latest n transcripts repeated and extended the one before them (the latest: ...)' ('' before
        any)."""
        extended, n = self.stats.partial_recent.counts()
        if not extended:
            return ""
        text, gap, before = self.stats.partial_last
        return (f"{extended} of the latest {n} transcripts repeated and extended the one before them (the latest: "
                f"{self.quote(text)} {gap:.1f} s after {self.quote(before)})")

    def hears_robot(self) -> bool:
        """Whether ECHO_RECUR of the latest ECHO_WINDOW classified transcripts repeated the robot's latest words."""
        return self.stats.self_echo_recent.holds()

    def self_echo_summary(self) -> str:
        """'k of the latest n transcripts repeated what the robot had just said (the latest: ...)' ('' before
        any)."""
        echoes, n = self.stats.self_echo_recent.counts()
        if not echoes:
            return ""
        heard, said = self.stats.self_echo_last
        return (f"{echoes} of the latest {n} transcripts repeated what the robot had just said (the latest: "
                f"{self.quote(heard)} after the robot's {said[:QUOTE_CHARS]!r})")

    def speech_not_english(self) -> bool:
        """Whether at least half of the latest classified transcripts (LANGUAGE_MIN of them at least) are not
        English (no MELD utterance is flagged)."""
        return self.stats.not_english_recent.holds()

    def language_summary(self) -> str:
        """'k of the latest n transcripts are not English (the latest: <why>)' ('' before any)."""
        other, n = self.stats.not_english_recent.counts()
        if not n:
            return ""
        why = f" (the latest: {self.stats.not_english_why})" if self.stats.not_english_why else ""
        return f"{other} of the latest {n} transcripts are not English{why}"

    def _caption_loop(self, generation: int) -> None:
        self.thread_setup.get("caption", lambda: None)()
        for kind, payload in self._jobs_of(self._captions, generation):
            try:
                if kind == "prefetch":
                    with self._partials_lock:
                        partial = self._partials.pop(payload, None)
                    caption = self._caption_window(partial) if partial is not None else None
                    if caption is not None:
                        self._prefetched[payload] = (partial.start, partial.end, caption)
                        while len(self._prefetched) > MAX_PREFETCHED:  # streams that never became final
                            self._prefetched.pop(next(iter(self._prefetched)), None)
                    continue
                utt, turns, queued, window = payload
                if self._caption_late(utt, queued):  # waited that long for the captioner: not made at all (nor
                    continue  # are its frames held any longer)
                caption = self._reuse_prefetched(utt) or self._caption_window(utt, window)
                if caption is None or self._caption_late(utt, queued):
                    continue
                while self._current(generation):  # not after a stop that came while captioning or waiting
                    try:
                        self._jobs.put(("refine", (utt, turns, caption)), timeout=0.2)  # a full queue: wait
                        break
                    except queue.Full:
                        pass
            except Exception as e:  # noqa: BLE001 - a bad job must never stop the worker
                self.stats.last_error = f"{type(e).__name__}: {e}"
                self.log("error", f"captioning failed: {self.stats.last_error}")

    def _caption_late(self, utt: UtteranceIn, queued: float) -> bool:
        """Whether the utterance's caption is later than caption_timeout_s after its text answer (then counted and
        discarded: a fused answer that late would mislead more than it tells)."""
        if time.monotonic() - queued <= self.caption_timeout_s:
            return False
        self.stats.caption_timeouts += 1
        self.log("warn", f"caption for {utt.utterance_id!r} took longer than {self.caption_timeout_s}s: discarded")
        return True

    def _reuse_prefetched(self, utt: UtteranceIn):
        """The streaming caption of this utterance if it covers enough of the final window."""
        found = self._prefetched.pop(self._stream_key(utt), None)
        if found is None:
            return None
        (start, end, caption), (said_from, said_until) = found, utt.window
        span = max(said_until - said_from, 1e-6)
        if (min(end, said_until) - max(start, said_from)) / span >= self.prefetch_coverage:
            self.stats.caption_prefetch_hits += 1
            return caption
        return None

    def _caption_window(self, utt: UtteranceIn, final: tuple[list, float, str] | None = None):
        """The caption of the utterance's window: of the frames buffered now (a partial result's), or of ``final``
        (the frames buffered when the final transcript was answered, how many seconds of the window had left the
        buffer by then, and where they came from: ``_window_frames``), which are checked (``_watch_cut``,
        ``_check_window``). Each caption made is counted by where its frames came from."""
        raw, lost_s, source = final if final is not None else self._window_frames(utt)
        frames = self._decode_window(raw)
        if final is not None:
            self._watch_cut(utt, lost_s)
            self._check_window(utt, len(raw), len(frames))
        if not frames:
            return None
        try:
            caption = self.captioner.caption(frames, utt.window)
        except Exception as e:  # noqa: BLE001 - the captioner may fail in any way
            self.stats.caption_errors += 1
            self.stats.last_error = f"captioner {type(e).__name__}: {e}"
            self.log("error", f"captioner failed on {utt.utterance_id!r}: {e}")
            return None
        if not caption.text:
            return None
        self.stats.caption_frames_from[source] += 1
        return caption

    def _decode_window(self, raw: list[tuple[float, Any]]) -> list[Frame]:
        """The frames of a window the captioner will look at, decoded: its ``frames_per_window`` picked uniformly
        from the buffered ones (a 5 Hz camera buffers 25 for a 5 s utterance; decoding a 720p JPEG takes about
        10 ms, and its image 2.7 MB). When one of those cannot be decoded, the picks are made again among the
        frames that can, as if the bad ones had never arrived."""
        n = getattr(self.captioner, "frames_per_window", None)
        n = self.frames_per_window if n is None else n
        decoded: dict[int, Frame | None] = {}

        def frame(i: int) -> Frame | None:
            if i not in decoded:
                stamp, item = raw[i]
                try:
                    decoded[i] = Frame(stamp, self.decode_frame(item))
                except Exception as e:  # noqa: BLE001 - ValueError from ours, CvBridgeError, cv2.error ...
                    decoded[i] = None
                    self.stats.last_error = f"frame: {e}"
            return decoded[i]

        picked = [frame(i) for i in uniform_picks(len(raw), n)]
        if all(f is not None for f in picked):
            return picked
        good = [f for f in (frame(i) for i in range(len(raw))) if f is not None]
        return [good[i] for i in uniform_picks(len(good), n)]

    def _watch_cut(self, utt: UtteranceIn, lost_s: float) -> None:
        """Count a final window whose first ``lost_s`` seconds had left the frame buffer when its transcript was
        answered (its caption sees the rest); the first time, say which frame_buffer_s would have kept it."""
        self.stats.window_cut_recent.add(lost_s > 0)
        if lost_s <= 0:
            return
        self.stats.windows_cut_short += 1
        span, needed = utt.window[1] - utt.window[0], math.ceil(self.frames.keep_s + lost_s)
        self.stats.window_cut_last = (lost_s, span, needed)
        if self.stats.windows_cut_short == 1:
            self.log("warn", f"the first {lost_s:.1f} s of the {span:.1f} s window of utterance {utt.utterance_id!r} "
                             "had left the frame buffer when its transcript came, and its caption sees the rest: "
                             f"frame_buffer_s ({self.frames.keep_s:g} s) must hold an utterance and the ASR's delay "
                             f"after it; {needed} s would have kept this one")

    def window_cut_summary(self) -> str:
        """'k utterance windows began before the oldest buffered frame (the latest: ...)' ('' before any)."""
        if not self.stats.windows_cut_short:
            return ""
        lost_s, span, needed = self.stats.window_cut_last
        cut, n = self.stats.window_cut_recent.counts()
        return (f"{self.stats.windows_cut_short} utterance windows began before the oldest buffered frame, {cut} of "
                f"the latest {n} (the latest: its first {lost_s:.1f} s of {span:.1f} s; frame_buffer_s {needed} s "
                "would have kept it)")

    def windows_cut_often(self) -> bool:
        """Whether CUT_RECUR of the latest CUT_WINDOW captioned windows began before the oldest buffered frame."""
        return self.stats.window_cut_recent.holds()

    def _check_window(self, utt: UtteranceIn, n_buffered: int, n_decoded: int) -> None:
        """Count a final utterance whose window gives no frame to caption; when the camera is sending frames,
        say why (once, until a window gives frames again): usually the camera's and the transcripts' stamps
        come from different clocks, e.g. a bag played without ``--clock``, or the camera's encoding cannot be
        decoded; either way no result would ever be refined."""
        if n_decoded:
            self.stats.frame_window_miss = ""
            return
        self.stats.windows_without_frames += 1
        start, end = utt.window
        span, ahead, offset = self.frames.span(), self.frames.future_offset_s, self.frames.arrival_offset_s
        clocks = ("the camera's and the transcripts' stamps come from different clocks; playing a bag: "
                  "`ros2 bag play --clock` and `use_sim_time:=true`")
        if n_buffered:
            miss = f"none of the {n_buffered} frames in its window could be decoded ({self.stats.last_error})"
        elif ahead is not None:
            miss = f"the camera's latest frames are stamped {ahead:+.1f} s from this node's clock and dropped; {clocks}"
        elif span is None or (span[0] <= end and span[1] >= start):
            self.stats.frame_window_miss = ""  # no camera, or a gap in its stream around this window
            return
        elif span[1] >= start:
            miss = (f"the buffered frames are stamped {span[0] - end:.1f} s after it; the transcript came more "
                    f"than frame_buffer_s ({self.frames.keep_s:g} s) after its words, or its stamps come from "
                    "another clock than the camera's")
        elif offset is not None and abs(offset) > CLOCK_SKEW_S:
            miss = (f"the buffered frames are stamped {start - span[1]:.1f} s before it and arrive stamped "
                    f"{offset:+.1f} s from this node's clock; {clocks}")
        else:
            miss = (f"the buffered frames are stamped {start - span[1]:.1f} s before it and no frame has "
                    "arrived since: is the camera stalled?")
        first = not self.stats.frame_window_miss
        self.stats.frame_window_miss = miss
        if first:
            self.log("warn", f"no frame in the window of utterance {utt.utterance_id!r} "
                             f"[{start:.1f}, {end:.1f}]: {miss}")

    def _refine(self, utt: UtteranceIn, turns: tuple[Turn, ...], caption) -> None:
        """The fused answer, from the utterance's context as it is now: a late transcript may have gone before it
        since its text answer (``_revise``), and that answer's caption is kept for the next such revision."""
        conv = self.conversations.get(utt.conversation_id)
        answered = conv.answered(turns[-1]) if conv is not None else None
        if answered is not None and conv.dialogue.index(answered.turn) is not None:
            turns = conv.dialogue.until(answered.turn)
        prediction = self.recognizer.predict(turns, caption)
        if prediction.modalities == "text":  # caption rejected (e.g. only emotion words) or no visual branch
            return
        if answered is not None:
            answered.caption = caption
        self.stats.refined += 1
        self._publish(utt, prediction, refined=True)

    def _publish(self, utt: UtteranceIn, prediction, refined: bool, revised: bool = False) -> None:
        latency = 1000 * (time.monotonic() - utt.received)
        if not refined and not revised:
            self.stats.latencies_ms.append(latency)
        self.stats.published += 1
        if utt.flags:
            prediction = replace(prediction, flags=prediction.flags + utt.flags)
        self.publish(Result(utt, prediction, refined, latency))
