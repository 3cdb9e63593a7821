"""Every parameter of the emotion node, declared once: name, default, description.

The node declares exactly these; config/emotion.yaml and the README table list the same (tested).
A parameter's type is its default's. ``coerce`` is the one type check: an integer is accepted for a
float parameter (``frame_buffer_s: 5`` in YAML and ``-p frame_buffer_s:=5`` both give integers, which
rclpy's static typing would turn into an exception at start-up); any other mismatch is a ValueError
that names the parameter, the type it needs and what it got.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    name: str
    default: object
    description: str


PARAMS: tuple[Param, ...] = (
    Param("model_dir", "", "ddvlm checkpoint directory; '' = the embedded default (checkpoints/default)"),
    Param("quantized", False, "apply INT8 weight-only quantization to the model at configure (WOQ)"),
    Param("woq_kernel", "auto", "WOQ kernel when quantized: auto | decompress | int8pack | dequant (see README)"),
    Param("device", "cpu", "torch device for the model and captioner: cpu, cuda, cuda:0 ..."),
    Param("cpu_threads", 0, "CPU threads of the inference worker (0 = all cores); every other thread uses 1"),
    Param("captioner", "none", "visual captioner: none | cue (OpenCV fallback) | qwen (Qwen2.5-VL)"),
    Param("captioner_model_dir", "", "local Qwen2.5-VL directory (captioner = qwen)"),
    Param("frames_per_window", 4, "frames sampled uniformly from each utterance window for the caption"),
    Param("frame_buffer_s", 10.0, "seconds of camera frames kept; older frames are dropped and counted"),
    Param("caption_timeout_s", 10.0, "a caption later than this after the text result is discarded"),
    Param("max_context_turns", 32, "utterances kept per conversation (the prompt also stays <= 511 tokens)"),
    Param("idle_timeout_s", 120.0, "a conversation silent this long starts a new context (0 = never)"),
    Param("default_speaker", "", "speaker id for plain-text transcripts without 'speaker: ' ('' = unknown)"),
    Param("speaker_prefix", True, "read 'speaker: text' in plain-text transcripts"),
    Param("text_window_s", 4.0, "window length (s) before arrival used for frames of plain-text transcripts"),
    Param("conversation_id", "default", "conversation id of plain-text transcripts"),
    Param("transcript_topic", "transcript", "std_msgs/String transcript topic ('' = off)"),
    Param("utterance_topic", "utterance", "ddvlm_msgs/Utterance topic ('' = off)"),
    Param("image_topic", "image", "sensor_msgs/Image topic ('' = off)"),
    Param("compressed_image_topic", "image/compressed", "sensor_msgs/CompressedImage topic ('' = off)"),
    Param("emotion_topic", "emotion", "ddvlm_msgs/EmotionDistribution output topic"),
    Param("transcript_qos_depth", 200, "queue depth of the transcript subscriptions (bursts must not be lost)"),
    Param("transcript_qos_reliability", "reliable", "reliable | best_effort for the transcript subscriptions"),
    Param("image_qos_depth", 1, "queue depth of the camera subscriptions (1: never a backlog)"),
    Param("image_qos_reliability", "best_effort", "reliable | best_effort for the camera subscriptions"),
    Param("emotion_qos_depth", 10, "queue depth of the /emotion publisher"),
    Param("input_timeout_s", 30.0, "WARN and a diagnostic when an input topic was silent this long (0 = off)"),
    Param("diagnostics_period_s", 1.0, "period of /diagnostics"),
    Param("ros4hri", False, "ROS4HRI: voices of /humans/voices/tracked, final /humans/voices/<id>/speech as "
          "transcripts (speaker = voice id), results mirrored as hri_msgs/Expression on /humans/voices/<id>/expression"),
    Param("autostart", False, "configure and activate on start (for launch setups without a lifecycle manager)"),
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


def parameter_errors(values: dict[str, object]) -> list[str]:
    """One message per value of ``values`` (parameter name -> value) that ``coerce`` refuses."""
    errors = []
    for name, value in values.items():
        try:
            coerce(name, value)
        except ValueError as e:
            errors.append(str(e))
    return errors
