"""Every parameter of the emotion node, declared once: name, default, description, allowed values.

The node declares exactly these; config/emotion.yaml and the README table list the same (tested).
A parameter's type is its default's. ``coerce`` is the one type check: an integer is accepted for a
float parameter (``frame_buffer_s: 5`` in YAML and ``-p frame_buffer_s:=5`` both give integers, which
rclpy's static typing would turn into an exception at start-up); any other mismatch is a ValueError
that names the parameter, the type it needs and what it got. ``parameter_errors`` adds the value checks
(choices, bounds, device and topic names), so configure can refuse every bad value at once, by name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ddvlm_core.speech_timing import BASE_S, ENDPOINT_S, PER_WORD_S, RTF
from ddvlm_ros.bond import HEARTBEAT_PERIOD_S

WOQ_KERNELS = ("auto", "int8pack", "decompress", "dequant")  # ddvlm_core.quantization.KERNELS (tested): no torch
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
                 "cudagraphs")  # ddvlm_core.model's
DEVICE = r"cpu|cuda(:\d+)?"
TURN_ENDS = ("auto", "always", "never")  # end_unpunctuated_turns: auto = while the ASR punctuates nothing


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()  # the allowed values of a string parameter
    at_least: float | None = None  # numbers: value >= at_least
    above: float | None = None  # numbers: value > above
    at_most: float | None = None  # numbers: value <= at_most
    pattern: str = ""  # strings: a full match of this regular expression
    topic: str = ""  # "optional": a topic name or '' (off); "required": a topic name
    what: str = ""  # the pattern in words
    applies: str = "configure"  # when a new value takes effect: the next "configure" or "activate", "now", "start"

    def described(self) -> str:
        """The description with when a new value takes effect (``ros2 param describe``)."""
        return f"{self.description} [{APPLIES[self.applies]}]"

    def constraint(self) -> str:
        """The allowed values in words ('' = any value of the type); shown by ``ros2 param describe``."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.at_least is not None and self.at_most is not None:
            return f"{self.at_least:g} to {self.at_most:g}"
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        if self.above is not None:
            return f"> {self.above:g}"
        if self.pattern:
            return self.what or f"a full match of {self.pattern}"
        if self.topic:
            return "a valid topic name" + (" or '' (off)" if self.topic == "optional" else "")
        return ""


APPLIES = {"configure": "a new value takes effect at the next configure",
           "activate": "a new value takes effect at the next activate", "now": "a new value takes effect at once",
           "start": "read when the node starts"}

PARAMS: tuple[Param, ...] = (
    Param("model_dir", "", "ddvlm checkpoint directory; '' = the embedded default (checkpoints/default)"),
    Param("quantized", False, "apply INT8 weight-only quantization to the model at configure (WOQ)"),
    Param("woq_kernel", "auto", "WOQ kernel when quantized: auto | decompress | int8pack | dequant (see README)",
          choices=WOQ_KERNELS),
    Param("compile", False, "torch.compile the text model at activate (inductor; needs g++ on a CPU, Triton on a "
          "GPU, except compile_mode cudagraphs; about a minute on 2 cores, cached afterwards): quantized prompts of "
          "128 tokens about 25% faster on a CPU with AMX, no faster on one without native bf16 "
          "(bench/quantization.py)"),
    Param("compile_mode", "default", "torch.compile mode when compile: default | reduce-overhead | max-autotune "
          "(these two replay CUDA graphs on a GPU, prompts padded to 64-token buckets: for batch-1 GPU latency) | "
          "max-autotune-no-cudagraphs | cudagraphs (CUDA graphs without inductor: no Triton needed, e.g. a Jetson)",
          choices=COMPILE_MODES),
    Param("device", "cpu", "torch device for the model and captioner: cpu, cuda, cuda:0 ...", pattern=DEVICE,
          what="cpu, cuda or cuda:<index>"),
    Param("cpu_threads", 0, "CPU threads of the inference worker (0 = all cores); every other thread uses 1",
          at_least=0),
    Param("captioner", "none", "visual captioner: none | cue (OpenCV fallback) | qwen (Qwen2.5-VL)",
          choices=("none", "cue", "qwen")),
    Param("captioner_model_dir", "", "local Qwen2.5-VL directory (captioner = qwen)"),
    Param("frames_per_window", 4, "frames sampled uniformly from each utterance window for the caption", at_least=1),
    Param("frame_buffer_s", 20.0, "seconds of camera frames kept (older frames are dropped and counted): an "
          "utterance and the ASR's delay after it must fit, or its caption misses its start (windows_cut_short)",
          above=0),
    Param("frame_rate_hz", 5.0, "camera frames kept per second (0 = every frame); a camera at this rate keeps "
          "every frame despite stamp jitter; a caption samples frames_per_window of them", at_least=0),
    Param("caption_timeout_s", 10.0, "a caption later than this after the text result is discarded", above=0,
          applies="now"),
    Param("max_context_turns", 32, "utterances kept per conversation (the prompt also stays <= 511 tokens); fewer: "
          "faster answers in long conversations, read with less context (reports/context_turns.md)", at_least=1),
    Param("idle_timeout_s", 120.0, "a conversation silent this long (ROS time: the bag's under use_sim_time) "
          "starts a new context (0 = never)", at_least=0, applies="now"),
    Param("max_conversations", 1000, "conversation contexts kept in memory; the least recently active go first",
          at_least=1, applies="now"),
    Param("default_speaker", "", "speaker id for plain-text transcripts without 'speaker: ' ('' = unknown)",
          applies="now"),
    Param("speaker_prefix", True, "read 'speaker: text' in plain-text transcripts", applies="now"),
    Param("text_window_s", 0.0, "camera window length (s) of a transcript without a start stamp (0 = how long its "
          f"words take to say: {BASE_S:g} s + {PER_WORD_S:g} s a word, MELD's rate)", at_least=0, applies="now"),
    Param("text_asr_endpoint_s", ENDPOINT_S, "silence (s) the ASR waits for before it ends an utterance: a transcript "
          "without an end stamp ended this long before it came, plus its decoding (text_asr_rtf)", at_least=0,
          applies="now"),
    Param("text_asr_rtf", RTF, "the ASR's real-time factor, its decoding time over the speech's duration (Whisper "
          "small: 0.1 desktop GPU, 0.3-0.5 Jetson Orin, 1 laptop CPU): places the camera window of a transcript "
          "without an end stamp", at_least=0, applies="now"),
    Param("conversation_id", "default", "conversation id of plain-text transcripts", applies="now"),
    Param("context_only_speakers", "", "speaker ids, comma-separated, whose utterances join the dialogue context "
          "but get no /emotion, e.g. the robot's own speech from its TTS ('robot'); a transcript repeating their "
          "latest words is flagged transcript-echoes-robot (the ASR heard the robot)", applies="now"),
    Param("drop_self_echoes", False, "drop what the ASR heard of the robot: a transcript flagged "
          "transcript-echoes-robot gets no /emotion and leaves the dialogue context (for a robot that hears itself "
          "and cannot mute its ASR while it speaks; the few people who repeat the robot's words are dropped too)",
          applies="now"),
    Param("revise_answers", True, "when a transcript arrives after turns that ended after it (an ASR per voice) "
          "and is placed before them, answer those turns again from the context in the order said (flag "
          "answer-revised; it replaces their first answers); false: they keep their first answers", applies="now"),
    Param("asr_min_confidence", 0.5, "flag an answer transcript-low-confidence when the ASR's confidence in its "
          "transcript is below this (LiveSpeech.confidence, Utterance.confidence, a JSON result's confidence or the "
          "mean of its words' conf); a transcript without a confidence is not flagged; 0 = never",
          at_least=0.0, at_most=1.0, applies="now"),
    Param("end_unpunctuated_turns", "auto", "end each turn without punctuation with a full stop in the model's "
          "prompt, as MELD's subtitles end theirs (the model then scores higher on an ASR that does not punctuate: "
          "reports/turn_ends.md): auto = while half of the latest transcripts of 3+ words have no punctuation, "
          "always, never", choices=TURN_ENDS, applies="now"),
    Param("quote_speech", True, "quote people's words (60 characters at most) in the log and /diagnostics when "
          "the node reports what the ASR did to them (a repetition loop, an echo of the robot, a partial result); "
          "false: how many words only, for studies whose participants' speech must not reach the log files "
          "(~/.ros/log) or recorded /diagnostics", applies="now"),
    Param("transcript_topic", "transcript", "std_msgs/String transcript topic ('' = off)", topic="optional",
          applies="activate"),
    Param("utterance_topic", "utterance", "ddvlm_msgs/Utterance topic ('' = off)", topic="optional",
          applies="activate"),
    Param("whisper_topic", "transcription", "whisper_msgs/Transcription topic (whisper_ros): transcripts that say how "
          "long their audio lasted and how long transcribing it took, which place their words' camera window; read "
          "where whisper_msgs is installed ('' = off)", topic="optional", applies="activate"),
    Param("voice_activity_topic", "voice_activity", "std_msgs/Bool of a voice activity detector that hears the "
          "people transcribed (respeaker_ros' is_speeching, audio/voice_detected), read with a captioner: a "
          "transcript without stamps (String, an Utterance without them) is captioned from the speech it heard "
          "before the transcript came, instead of a window estimated from its words (ddvlm_core.voice_activity; "
          "ROS4HRI voices use their own /humans/voices/<id>/is_speaking) ('' = off)", topic="optional",
          applies="activate"),
    Param("robot_speaking_topic", "robot_speaking", "std_msgs/Bool: whether the robot is speaking now (the "
          "/robot_speaking that a robot's speech stack publishes and asr_vosk reads), read with a captioner: what a "
          "VAD (voice_activity_topic, ROS4HRI's is_speaking) hears meanwhile is the robot's voice, no person's speech "
          "('' = off)",
          topic="optional", applies="activate"),
    Param("image_topic", "image", "sensor_msgs/Image topic ('' = off)", topic="optional", applies="activate"),
    Param("compressed_image_topic", "image/compressed", "sensor_msgs/CompressedImage topic ('' = off)",
          topic="optional", applies="activate"),
    Param("robot_speech_topic", "robot_speech", "std_msgs/String of what the robot says, e.g. the text it sends its "
          "TTS (naoqi_driver's /speech): each message is a turn of speaker 'robot' (TTS markup removed) that joins "
          "the dialogue context and gets no /emotion, and transcripts repeating it are flagged "
          "transcript-echoes-robot ('' = off)", topic="optional", applies="activate"),
    Param("emotion_topic", "emotion", "ddvlm_msgs/EmotionDistribution output topic", topic="required"),
    Param("transcript_qos_depth", 200, "queue depth of the transcript subscriptions (bursts must not be lost)",
          at_least=1, applies="activate"),
    Param("transcript_qos_reliability", "reliable", "reliable | best_effort for the transcript subscriptions",
          choices=("reliable", "best_effort"), applies="activate"),
    Param("image_qos_depth", 1, "queue depth of the camera subscriptions (1: never a backlog)", at_least=1,
          applies="activate"),
    Param("image_qos_reliability", "best_effort", "reliable | best_effort for the camera subscriptions",
          choices=("reliable", "best_effort"), applies="activate"),
    Param("emotion_qos_depth", 10, "queue depth of the /emotion publisher", at_least=1),
    Param("input_timeout_s", 30.0, "WARN and a diagnostic when, with a captioner, camera frames (image, "
          "image/compressed) stopped this long, or transcripts did while no ASR is on the graph to send them (no "
          "publisher of transcript, utterance, transcription or ROS4HRI's tracked voices: nobody speaking is no "
          "fault) (0 = off)",
          at_least=0, applies="now"),
    Param("diagnostics_period_s", 1.0, "period of /diagnostics", above=0, applies="now"),
    Param("bond_heartbeat_period", HEARTBEAT_PERIOD_S, "seconds between the heartbeats of the bond a "
          "nav2_lifecycle_manager checks its active nodes by (bond/msg/Status on bond; nav2's servers name theirs "
          "so); 0 = no bond, and such a manager then needs bond_timeout: 0.0; none with autostart: true (no "
          "manager starts such a node)", at_least=0, applies="activate"),
    Param("ros4hri", False, "ROS4HRI: voices of /humans/voices/tracked, final /humans/voices/<id>/speech as "
          "transcripts (speaker = voice id), results mirrored as hri_msgs/Expression on "
          "/humans/voices/<id>/expression", applies="activate"),
    Param("face_expression", False, "with ros4hri: also publish each voice's hri_msgs/Expression on "
          "/humans/faces/<id>/expression of the face its person manager links to the voice's person "
          "(/humans/persons/<id>/voice_id, face_id), where REP-155 puts expressions and libhri / pyhri read them; "
          "leave off where a facial-expression node publishes there", applies="activate"),
    Param("caption_person_crops", True, "with ros4hri and a captioner: caption a voice's utterance from the crops "
          "of its person's body (/humans/bodies/<id>/cropped), else face, when the person manager links them "
          "(/humans/persons/<id>/voice_id, body_id, face_id) and they have frames in its window; else from the "
          "camera", applies="now"),
    Param("autostart", False, "configure and activate on start (for launch setups without a lifecycle manager)",
          applies="start"),
)

PARAMS_BY_NAME = {p.name: p for p in PARAMS}
_TYPE_NAMES = {bool: "a bool (true | false)", int: "an integer", float: "a number", str: "a string"}


def coerce(name: str, value: object) -> object:
    """``value`` as parameter ``name``'s type (int -> float for float parameters); ValueError if it is not."""
    kind = type(PARAMS_BY_NAME[name].default)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        got = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise ValueError(f"parameter {name!r} must be {_TYPE_NAMES[kind]}, got {value!r} ({got})")
    return value


def value_error(name: str, value: object) -> str:
    """'' if ``value`` (already of the parameter's type) is allowed, else why not."""
    p = PARAMS_BY_NAME[name]
    if isinstance(value, float) and not math.isfinite(value):  # YAML .nan / .inf: no bound check refuses NaN
        return f"parameter {name!r} must be a finite number {p.constraint()}".rstrip() + f", got {value!r}"
    bad = ((p.choices and value not in p.choices)
           or (p.at_least is not None and value < p.at_least)
           or (p.above is not None and value <= p.above)
           or (p.at_most is not None and value > p.at_most)
           or (p.pattern and not re.fullmatch(p.pattern, value)))
    if bad:
        return f"parameter {name!r} must be {p.constraint()}, got {value!r}"
    if p.topic and (value or p.topic == "required"):
        from rclpy.exceptions import InvalidTopicNameException
        from rclpy.validate_topic_name import validate_topic_name

        try:
            validate_topic_name(value)
        except InvalidTopicNameException as e:
            return f"parameter {name!r} must be {p.constraint()}, got {value!r} ({str(e).splitlines()[0]})"
    return ""


def parameter_errors(values: dict[str, object]) -> list[str]:
    """One message per value of ``values`` (parameter name -> value) of the wrong type or not allowed."""
    errors = []
    for name, value in values.items():
        try:
            message = value_error(name, coerce(name, value))
        except ValueError as e:
            message = str(e)
        if message:
            errors.append(message)
    return errors


# ---- launch arguments (launch/emotion.launch.py) --------------------------------------------------
# Topics are set by remapping, not by these parameters (the *_topic parameters only switch an input off).
LAUNCH_DEFAULTS = {"autostart": "true"}  # the launch file starts the node by itself unless told otherwise


def launch_arguments() -> list[dict]:
    """One launch argument per non-topic parameter: name, default_value, description, choices.

    The default is '' (= keep the params file's value), so ``ros2 launch ... quantized:=true`` overrides
    only what is given; ``autostart`` defaults to true in the launch file.
    """
    out = []
    for p in PARAMS:
        if p.topic:
            continue
        default = LAUNCH_DEFAULTS.get(p.name, "")
        choices = list(p.choices) if p.choices else (["true", "false"] if isinstance(p.default, bool) else None)
        if choices and default not in choices:
            choices = [default, *choices]
        shown = str(p.default).lower() if isinstance(p.default, bool) else p.default
        where = (f"node default {shown!r}; '' = the params file's value" if default == ""
                 else f"launch default {default}")
        out.append({"name": p.name, "default_value": default, "choices": choices,
                    "description": f"{p.description} [{where}]"})
    return out


def launch_topics(topic_arguments, values: dict[str, str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The launch file's topic arguments (remapped name, launch argument, ...) and their values -> (remappings,
    parameters): a topic given remaps the node's name onto it; '' turns that input off through its ``*_topic``
    parameter, since rcl refuses an empty remapping ("Couldn't parse remap rule") and the node would not start."""
    remappings, off = [], {}
    for name, arg, *_ in topic_arguments:
        if values.get(arg, ""):
            remappings.append((name, values[arg]))
        else:
            off[arg] = ""
    return remappings, off


RESPAWN_DELAY_S = 2.0  # the launch file's default wait before a respawn (nav2's bringup waits as long)


def launch_respawn(respawn: str, delay: str) -> tuple[bool, float]:
    """The launch arguments ``respawn`` ('true' / 'false') and ``respawn_delay`` (seconds, '' = RESPAWN_DELAY_S)
    -> (respawn, respawn_delay) for the node's launch action: a node whose process died is started again and, with
    autostart, configures and activates itself. ValueError, naming the argument, for anything else."""
    if respawn not in ("true", "false"):
        raise ValueError(f"launch argument respawn: 'true' or 'false', got {respawn!r}")
    try:
        seconds = float(delay) if delay.strip() else RESPAWN_DELAY_S
    except ValueError:
        raise ValueError(f"launch argument respawn_delay: seconds, got {delay!r}") from None
    if not 0.0 <= seconds < float("inf"):
        raise ValueError(f"launch argument respawn_delay: seconds >= 0, got {delay!r}")
    return respawn == "true", seconds


def launch_overrides(values: dict[str, str]) -> dict[str, object]:
    """Launch argument strings -> typed parameter overrides, leaving out the empty ones (ValueError, naming
    every bad argument, for a value of the wrong type or not allowed)."""
    return typed_overrides(values, "launch arguments")


def typed_overrides(values: dict[str, str], source: str) -> dict[str, object]:
    """Parameter values given as text (launch arguments, ``--param name:=value``) -> typed values, read as
    YAML like ``ros2 run -p`` does, empty ones left out; ValueError naming every unknown or bad one."""
    import yaml

    unknown = sorted(set(values) - set(PARAMS_BY_NAME))
    if unknown:
        raise ValueError(f"{source}: unknown parameters {unknown}")
    typed = {}
    for name, text in values.items():
        if text == "":
            continue
        try:
            typed[name] = text if type(PARAMS_BY_NAME[name].default) is str else yaml.safe_load(text)
        except yaml.YAMLError:
            typed[name] = text  # reported below as the wrong type
    errors = parameter_errors(typed)
    if errors:
        raise ValueError(f"{source}: " + "; ".join(errors))
    return {name: coerce(name, value) for name, value in typed.items()}


def params_files(argv: list[str]) -> list[str]:
    """The files given with ``--params-file`` among the ROS arguments of ``argv`` (after ``--ros-args``, up to
    ``--``), as rcl reads them."""
    files, ros, args = [], False, iter(argv)
    for arg in args:
        if arg == "--ros-args":
            ros = True
        elif arg == "--":
            ros = False
        elif ros and arg == "--params-file":
            files.append(next(args, ""))
    return [f for f in files if f]


def params_file_nodes(doc: object, prefix: str = "") -> list[str]:
    """The node names a params file's YAML holds ``ros__parameters`` for, as rcl reads them: nested keys joined
    by '/' (``/robot1: {ddvlm_emotion: ...}`` is ``/robot1/ddvlm_emotion``), each with a leading '/'."""
    if not isinstance(doc, dict):
        return []
    names = []
    for key, value in doc.items():
        if key == "ros__parameters":
            names.append(prefix or "/")
        else:
            names += params_file_nodes(value, f"{prefix}/{str(key).strip('/')}")
    return names


def node_name_matches(pattern: str, fully_qualified_name: str) -> bool:
    """Whether rcl gives the parameters under ``pattern`` (a params file's node name) to the node
    ``fully_qualified_name``: ``**`` stands for any number of namespaces, none included, ``*`` for one name."""
    tokens = [t for t in pattern.split("/") if t]
    regex = "".join("(/[^/]+)*" if t == "**" else "/[^/]+" if t == "*" else "/" + re.escape(t) for t in tokens)
    return re.fullmatch(regex or "/", fully_qualified_name) is not None


def unapplied_params_files(paths: list[str], fully_qualified_name: str) -> list[str]:
    """Why each params file of ``paths`` gave the node ``fully_qualified_name`` none of its parameters: rcl applies
    only the parameters under a node name that matches the node's, namespace included, and says nothing otherwise
    (a file keyed ``ddvlm_emotion:`` is ignored by a node launched with ``namespace:=robot1``). A file that cannot
    be read is left to rcl, which refused it at start."""
    import yaml

    why = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                nodes = params_file_nodes(yaml.safe_load(f))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if any(node_name_matches(n, fully_qualified_name) for n in nodes):
            continue
        base = fully_qualified_name.rpartition("/")[2]
        held = f"its parameters are for {', '.join(nodes)}" if nodes else "it has no 'ros__parameters'"
        why.append(f"{path}: nothing in it applies to this node, {fully_qualified_name}: {held}; key them "
                   f"'/**/{base}:' (this node's name in any namespace) or '{fully_qualified_name}:'")
    return why
