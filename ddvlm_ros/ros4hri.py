"""ROS4HRI switch (REP-155): voices in, hri_msgs/Expression out, when ``hri_msgs`` imports.

- ``/humans/voices/tracked`` (hri_msgs/IdsList) says which voices exist; for each one the node reads
  ``/humans/voices/<id>/speech`` (hri_msgs/LiveSpeech). A non-empty ``final`` is an utterance whose
  speaker is the voice id (``<s1>``, ``<s2>`` ... stay stable per voice); ``incremental`` results start
  the utterance's camera window and caption its frames while the person speaks (streaming).
- Every /emotion result of a voice's utterance is mirrored as hri_msgs/Expression on
  ``/humans/voices/<id>/expression``: MELD's 7 classes are Ekman's basic emotions, named with the
  message's constants; ``confidence`` is the top probability. Valence and arousal are not estimated by
  this model and are NaN (0 would read as "neutral valence"). REP-155 puts face expressions under
  /humans/faces/<id>/expression; a person manager links a voice to a face.
"""
from __future__ import annotations

import math
import threading
from typing import Callable

VOICES = "/humans/voices"

EXPRESSION_NAME = {  # MELD label -> hri_msgs/Expression constant name
    "neutral": "NEUTRAL", "surprise": "SURPRISED", "fear": "SCARED", "sadness": "SAD",
    "joy": "HAPPY", "disgust": "DISGUSTED", "anger": "ANGRY",
}


def hri_msgs_available() -> bool:
    try:
        import hri_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def expression_msg(prediction, header):
    """hri_msgs/Expression for an EmotionPrediction."""
    from hri_msgs.msg import Expression

    return Expression(header=header, expression=getattr(Expression, EXPRESSION_NAME[prediction.top_label]),
                      valence=math.nan, arousal=math.nan, confidence=float(prediction.confidence))


def valid_id(voice_id: str) -> bool:
    """Usable as a topic name token: ASCII letters, digits and '_', not starting with a digit."""
    return (bool(voice_id) and voice_id.isascii() and voice_id.replace("_", "a").isalnum()
            and not voice_id[0].isdigit())


class Ros4HriBridge:
    """Per-voice subscriptions and expression publishers of one node; created at activate."""

    def __init__(self, node, on_final: Callable, on_incremental: Callable, new_id: Callable[[], str],
                 now: Callable[[], float], qos, callback_group=None):
        """``on_final(voice, msg, start, utterance_id)`` / ``on_incremental(voice, msg, start, utterance_id)``:
        ``start`` is the ROS time of the voice's first incremental result (None if there was none) and the
        utterance id is shared by an utterance's incremental and final results."""
        from hri_msgs.msg import IdsList

        self.node, self.on_final, self.on_incremental = node, on_final, on_incremental
        self.new_id, self.now = new_id, now
        self.qos, self.group = qos, callback_group
        self.voices: dict[str, tuple] = {}  # id -> (speech subscription, expression publisher)
        self.speaking: dict[str, tuple[float, str]] = {}  # id -> (start, utterance id) while speaking
        self.lock = threading.Lock()
        self.tracked = node.create_subscription(IdsList, f"{VOICES}/tracked", self._on_tracked, 10,
                                                callback_group=callback_group)

    def _on_tracked(self, msg) -> None:
        from hri_msgs.msg import Expression, LiveSpeech

        ids = {i for i in msg.ids if valid_id(i)}
        with self.lock:  # publish() runs on the inference thread
            for gone in set(self.voices) - ids:
                sub, pub = self.voices.pop(gone)
                self.node.destroy_subscription(sub)
                self.node.destroy_publisher(pub)
                self.speaking.pop(gone, None)
            for voice in sorted(ids - set(self.voices)):
                sub = self.node.create_subscription(LiveSpeech, f"{VOICES}/{voice}/speech",
                                                    lambda m, v=voice: self._on_speech(v, m), self.qos,
                                                    callback_group=self.group)
                pub = self.node.create_publisher(Expression, f"{VOICES}/{voice}/expression", 10)
                self.voices[voice] = (sub, pub)

    def _on_speech(self, voice: str, msg) -> None:
        if msg.final.strip():
            start, uid = self.speaking.pop(voice, None) or (None, self.new_id())
            self.on_final(voice, msg, start, uid)
        elif msg.incremental.strip():
            if voice not in self.speaking:
                self.speaking[voice] = (self.now(), self.new_id())
            start, uid = self.speaking[voice]
            self.on_incremental(voice, msg, start, uid)

    def publish(self, voice: str, prediction, header) -> bool:
        with self.lock:
            entry = self.voices.get(voice)
            if entry is None:  # the voice stopped being tracked meanwhile
                return False
            entry[1].publish(expression_msg(prediction, header))
            return True

    def stop(self) -> None:
        with self.lock:
            for sub, pub in self.voices.values():
                self.node.destroy_subscription(sub)
                self.node.destroy_publisher(pub)
            self.voices.clear()
        self.node.destroy_subscription(self.tracked)
