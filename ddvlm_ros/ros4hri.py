"""ROS4HRI switch (REP-155): voices in, hri_msgs/Expression out, when ``hri_msgs`` imports.

- ``/humans/voices/tracked`` (hri_msgs/IdsList) says which voices exist; for each one the node reads
  ``/humans/voices/<id>/speech`` (hri_msgs/LiveSpeech). A non-empty ``final`` is an utterance whose
  speaker is the voice id (``<s1>``, ``<s2>`` ... stay stable per voice); ``incremental`` results start
  the utterance's camera window and caption its frames while the person speaks (streaming).
- Every /emotion result of a voice's utterance is mirrored as hri_msgs/Expression on
  ``/humans/voices/<id>/expression``, except those a behaviour node should ignore (NOT_MIRRORED): MELD's 7
  classes are Ekman's basic emotions, named with the message's constants; ``confidence`` is the top probability.
  Valence and arousal are not estimated by this model and are NaN (0 would read as "neutral valence"). REP-155
  puts face expressions under /humans/faces/<id>/expression; a person manager links a voice to a face. A voice
  that leaves the tracked list is still heard for VOICE_LINGER_S, and its Expression publisher kept as long after
  it left or after its last words heard since: an ASR's final result may come after the list that drops its voice
  (nothing orders two topics), and the answers to a voice's last words come after the model has run.
- With a captioner, each voice's ``/humans/voices/<id>/is_speaking`` (std_msgs/Bool: its voice activity, as
  asr_vosk relays its VAD there) places its utterances' camera windows on the speech it heard
  (``ddvlm_core.voice_activity``): a final result's stamp is when the ASR recognised it, after its endpoint.
- ``face_expression``: each mirrored answer also goes on ``/humans/faces/<face_id>/expression`` of the face that
  the person manager links to the voice's person, where REP-155 puts expressions and libhri / pyhri read them
  (``person.face.expression``); off by default, as a facial-expression node may publish there already (the node
  WARNs of one: two sources on one topic). The face's publisher is made as soon as a person links it to a voice, so
  that the behaviour nodes have matched it before its first answer (a publisher made at its first answer loses that
  answer to a subscriber of another process that has not matched it yet), and destroyed once no person links it to
  a voice, VOICE_LINGER_S after its last answer at the earliest.
- ``PersonLinks``: the person manager's links (``/humans/persons/tracked``; per person ``voice_id``, ``body_id`` and
  ``face_id``, std_msgs/String, latched), read with a captioner or ``face_expression``. ``PersonCrops``: the crops
  of the tracked bodies and faces (``/humans/bodies/<id>/cropped``, ``/humans/faces/<id>/cropped``,
  sensor_msgs/Image). With several people in view the camera's frame shows all of them, while the captions that
  trained the visual branch came from MELD's clips, which mostly frame the speaker: a voice's utterance is captioned
  from its own person's body crops, else face crops, when the person manager links them (``caption_person_crops``).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ddvlm_core.language import NOT_ENGLISH_FLAG
from ddvlm_core.self_echo import SELF_ECHO_FLAG
from ddvlm_core.voice_activity import VoiceActivity
from ddvlm_ros.convert import messages_import

VOICES = "/humans/voices"
PERSONS = "/humans/persons"
FACES = "/humans/faces"
CROPPED = {"body": "/humans/bodies", "face": FACES}  # crop kind -> its REP-155 namespace
LINKS = ("voice_id", "body_id", "face_id")  # a person's links, in the order their crops are preferred
VOICE_LINGER_S = 15.0  # a voice that left the tracked list is still heard this long (ROS time: its final result may
# come after that list), and its Expression publisher kept this long after it left or after its last words heard since
# (wall time: the answers to them still come, the text answer after its inference, the fused one up to
# caption_timeout_s later), and for as long as the node still has utterances to answer (a backlog)

NOT_MIRRORED = (SELF_ECHO_FLAG, NOT_ENGLISH_FLAG)  # answers a behaviour node should ignore (the README's flags
# table): Expression has no flags, so they are not mirrored (the robot's own words, and words the model cannot read,
# are no expression of the voice)
EXPRESSION_NAME = {  # MELD label -> hri_msgs/Expression constant name
    "neutral": "NEUTRAL", "surprise": "SURPRISED", "fear": "SCARED", "sadness": "SAD",
    "joy": "HAPPY", "disgust": "DISGUSTED", "anger": "ANGRY",
}


def hri_msgs_available() -> bool:
    return messages_import("hri_msgs")


def expression_msg(prediction, header):
    """hri_msgs/Expression for an EmotionPrediction."""
    from hri_msgs.msg import Expression

    return Expression(header=header, expression=getattr(Expression, EXPRESSION_NAME[prediction.top_label]),
                      valence=math.nan, arousal=math.nan, confidence=float(prediction.confidence))


def mirrored(flags: Iterable[str]) -> bool:
    """Whether an answer with these flags is mirrored as hri_msgs/Expression (none of NOT_MIRRORED)."""
    return not set(flags) & set(NOT_MIRRORED)


def spoken_locale(msg) -> str:
    """What a LiveSpeech says its words are in: ``locale`` (hri_msgs 2.1 on, e.g. 'en_GB', as PAL's asr_vosk fills
    it), else ``language`` (hri_msgs 2.0 and 2.1, an IETF tag, e.g. 'en-GB'), else '' (not said)."""
    return (getattr(msg, "locale", "") or getattr(msg, "language", "") or "").strip()


def valid_id(voice_id: str) -> bool:
    """Usable as a topic name token: ASCII letters, digits and '_', not starting with a digit."""
    return (bool(voice_id) and voice_id.isascii() and voice_id.replace("_", "a").isalnum()
            and not voice_id[0].isdigit())


@dataclass
class LeftVoice:
    """A voice that left the tracked list, until its linger has run out."""
    speech: object  # its LiveSpeech subscription
    expression: object  # its Expression publisher
    is_speaking: object  # its is_speaking subscription (None: not read)
    heard_until: float  # ROS time (s) until which what it says is still heard
    kept_until: float  # time.monotonic() until which its publisher is kept


class Ros4HriBridge:
    """Per-voice subscriptions and expression publishers of one node; created at activate."""

    def __init__(self, node, on_final: Callable, on_incremental: Callable, new_id: Callable[[], str],
                 now: Callable[[], float], qos, callback_group=None, busy: Callable[[], bool] = lambda: False,
                 voice_activity: bool = False, linked_faces: Callable[[], set] = set):
        """``on_final(voice, msg, start, utterance_id, activity)`` / ``on_incremental(voice, msg, start,
        utterance_id, activity)``: ``start`` is the ROS time of the voice's first incremental result (None if there
        was none), the utterance id is shared by an utterance's incremental and final results, and ``activity`` is
        the voice's VoiceActivity (None without ``voice_activity``: is_speaking not read); ``busy()``: whether the
        node still has utterances to answer (no Expression publisher goes meanwhile); ``linked_faces()``: the faces
        a person links to a voice now (``face_expression``: their Expression publishers are made, and stay)."""
        from hri_msgs.msg import IdsList
        from rclpy.clock import Clock, ClockType

        self.node, self.on_final, self.on_incremental = node, on_final, on_incremental
        self.new_id, self.now, self.busy, self.linked_faces = new_id, now, busy, linked_faces
        self.qos, self.group = qos, callback_group
        self.voices: dict[str, tuple] = {}  # id -> (speech subscription, expression publisher, is_speaking one)
        self.voice_activity = voice_activity  # whether each voice's is_speaking is read
        self.activity: dict[str, VoiceActivity] = {}  # id -> what its is_speaking said, while it is heard
        self.robot_speaking = False  # what its VADs hear meanwhile is the robot (VoiceActivity.robot)
        self.leaving: dict[str, LeftVoice] = {}  # id of a voice no longer tracked, until its linger has run out
        self.faces: dict[str, list] = {}  # face id -> [its Expression publisher, time.monotonic() it is kept until]
        self.stopped = False  # stop() destroyed everything: nothing is made any more (a link may still come in)
        self.speaking: dict[str, tuple[float, str]] = {}  # id -> (start, utterance id) while speaking
        self.lock = threading.Lock()
        self.tracked = node.create_subscription(IdsList, f"{VOICES}/tracked", self._on_tracked, 10,
                                                callback_group=callback_group)
        self.reaper = node.create_timer(1.0, self._reap, callback_group=callback_group,  # wall time: it also runs
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))  # when a bag's /clock stops

    def _on_tracked(self, msg) -> None:
        from hri_msgs.msg import Expression, LiveSpeech

        ids = {i for i in msg.ids if valid_id(i)}
        now, wall = self.now(), time.monotonic()
        with self.lock:  # publish() runs on the inference thread
            if self.stopped:  # a list that came in as the node deactivated (a MultiThreadedExecutor runs both)
                return
            for gone in set(self.voices) - ids:  # still heard, and answered, for VOICE_LINGER_S
                speech, expression, is_speaking = self.voices.pop(gone)
                self.leaving[gone] = LeftVoice(speech, expression, is_speaking, now + VOICE_LINGER_S,
                                               wall + VOICE_LINGER_S)
            for voice in sorted(ids - set(self.voices)):
                left = self.leaving.pop(voice, None)
                if left is not None:  # back: the same subscription and publisher
                    if now > left.heard_until:  # no longer the utterance it had begun before it left
                        self.speaking.pop(voice, None)
                        if voice in self.activity:  # nor the speech heard then
                            self.activity[voice].forget()
                    self.voices[voice] = (left.speech, left.expression, left.is_speaking)
                    continue
                sub = self.node.create_subscription(LiveSpeech, f"{VOICES}/{voice}/speech",
                                                    lambda m, v=voice: self._on_speech(v, m), self.qos,
                                                    callback_group=self.group)
                self.voices[voice] = (sub, self.node.create_publisher(Expression, f"{VOICES}/{voice}/expression", 10),
                                      self._read_is_speaking(voice))
            self._drop_left(now, wall)

    def _read_is_speaking(self, voice: str):
        """The voice's is_speaking subscription (None when not read), with a fresh VoiceActivity."""
        if not self.voice_activity:
            return None
        from std_msgs.msg import Bool

        self.activity[voice] = VoiceActivity(robot_speaking=self.robot_speaking)
        return self.node.create_subscription(Bool, f"{VOICES}/{voice}/is_speaking",
                                             lambda m, v=voice: self._on_is_speaking(v, m), self.qos,
                                             callback_group=self.group)

    def robot(self, speaking: bool, t: float) -> None:
        """The robot started or stopped speaking at ``t``: what the voices' VADs hear meanwhile is the robot."""
        with self.lock:
            self.robot_speaking = speaking
            for activity in self.activity.values():
                activity.robot(speaking, t)

    def vad_changes(self) -> int:
        """How many times the voices' VADs changed state (their is_speaking), of the voices still heard."""
        with self.lock:
            return sum(activity.changes for activity in self.activity.values())

    def forget_speech(self) -> None:
        """ROS time went back (a bag played again): the speech the voices' VADs heard is of a timeline that will not
        come again (its times would keep the new speech from placing anything)."""
        with self.lock:
            for activity in self.activity.values():
                activity.forget()

    def _on_is_speaking(self, voice: str, msg) -> None:
        now = self.now()
        with self.lock:
            left, activity = self.leaving.get(voice), self.activity.get(voice)
            if activity is not None and (left is None or now <= left.heard_until):  # its linger has not run out
                activity.hear(bool(msg.data), now)

    def _reap(self) -> None:
        with self.lock:
            self._drop_left(self.now(), time.monotonic())
            self._sync_faces()

    def _drop_faces(self, wall: float, force: bool = False) -> None:
        """Destroy the face Expression publishers kept until before ``wall`` whose face no person links to a voice
        now (``linked_faces``), once the node has nothing left to answer (or ``force``)."""
        if not force and (not self.faces or self.busy()):
            return
        linked = set() if force else self.linked_faces()
        for face in [f for f, (_, kept_until) in self.faces.items() if kept_until < wall and f not in linked]:
            self.node.destroy_publisher(self.faces.pop(face)[0])

    def _drop_left(self, now: float, wall: float, force: bool = False) -> None:
        """Unsubscribe the voices that left the tracked list and are no longer heard at ROS time ``now``, and destroy
        their Expression publishers, once kept until before ``wall`` (time.monotonic()) and the node has nothing left
        to answer (or ``force``)."""
        if not force and self.leaving and self.busy():
            return
        for voice in [v for v, left in self.leaving.items() if left.heard_until < now and left.kept_until < wall]:
            left = self.leaving.pop(voice)
            self.node.destroy_subscription(left.speech)
            self.node.destroy_publisher(left.expression)
            if left.is_speaking is not None:
                self.node.destroy_subscription(left.is_speaking)
            self.speaking.pop(voice, None)
            self.activity.pop(voice, None)

    def _on_speech(self, voice: str, msg) -> None:
        with self.lock:
            left = self.leaving.get(voice)
            if left is not None and self.now() > left.heard_until:  # its linger ran out: not heard
                self.speaking.pop(voice, None)
                return
            if left is not None and msg.final.strip():  # its answer still comes after it left
                left.kept_until = max(left.kept_until, time.monotonic() + VOICE_LINGER_S)
        activity = self.activity.get(voice)
        if msg.final.strip():
            start, uid = self.speaking.pop(voice, None) or (None, self.new_id())
            self.on_final(voice, msg, start, uid, activity)
        elif msg.incremental.strip():
            if voice not in self.speaking:
                self.speaking[voice] = (self.now(), self.new_id())
            start, uid = self.speaking[voice]
            self.on_incremental(voice, msg, start, uid, activity)

    def publish(self, voice: str, prediction, header, face: str = "") -> bool:
        """Mirror an answer to what ``voice`` said, also after it left the tracked list (VOICE_LINGER_S), and on
        ``face``'s expression topic when given (``face_expression``: the face the person manager links to the voice's
        person); False when the voice has no publisher (any more)."""
        with self.lock:
            left = self.leaving.get(voice)
            pub = self.voices[voice][1] if voice in self.voices else left.expression if left is not None else None
            if pub is None:
                return False
            msg = expression_msg(prediction, header)
            pub.publish(msg)
            if valid_id(face):
                self._face_publisher(face)
                self.faces[face][1] = time.monotonic() + VOICE_LINGER_S
                self.faces[face][0].publish(msg)
            return True

    def _face_publisher(self, face: str) -> None:
        """Make ``face``'s Expression publisher, unless it has one (the lock held)."""
        from hri_msgs.msg import Expression

        if face not in self.faces:
            self.faces[face] = [self.node.create_publisher(Expression, f"{FACES}/{face}/expression", 10), 0.0]

    def sync_faces(self) -> None:
        """Make the Expression publisher of each face a person links to a voice now (``linked_faces``), before its
        first answer, and destroy those of the faces no longer linked whose linger has run out (also once a second,
        on the reaper's timer)."""
        with self.lock:
            self._sync_faces()

    def _sync_faces(self) -> None:
        if self.stopped:  # a person's link that came in as the node deactivated (a MultiThreadedExecutor)
            return
        for face in sorted(self.linked_faces()):
            if valid_id(face):
                self._face_publisher(face)
        self._drop_faces(time.monotonic())

    def face_topics(self) -> list[str]:
        """The faces' expression topics the node publishes on now (``face_expression``)."""
        with self.lock:
            return [f"{FACES}/{face}/expression" for face in sorted(self.faces)]

    def stop(self) -> None:
        with self.lock:
            for sub, pub, is_speaking in self.voices.values():
                self.node.destroy_subscription(sub)
                self.node.destroy_publisher(pub)
                if is_speaking is not None:
                    self.node.destroy_subscription(is_speaking)
            self.voices.clear()
            self.activity.clear()
            self._drop_left(math.inf, math.inf, force=True)
            self._drop_faces(math.inf, force=True)
            self.stopped = True
        self.node.destroy_timer(self.reaper)
        self.node.destroy_subscription(self.tracked)


class PersonLinks:
    """Which voice, body and face belong to each tracked person (REP-155's person manager), on one node.

    The links are latched: they are subscribed with transient-local durability, as hri_person_manager publishes
    them, so that a node started later still reads them."""

    def __init__(self, node, callback_group=None, on_change: Callable[[], None] = lambda: None):
        """``on_change()``: after the persons or their links changed."""
        from hri_msgs.msg import IdsList
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        self.node, self.group, self.on_change = node, callback_group, on_change
        self.latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                  reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.persons: dict[str, list] = {}  # person id -> its link subscriptions
        self.links: dict[str, dict[str, str]] = {}  # person id -> {"voice_id": .., "body_id": .., "face_id": ..}
        self.stopped = False  # stop() destroyed everything: a list that comes in after subscribes nothing
        self.tracked = node.create_subscription(IdsList, f"{PERSONS}/tracked", self._on_persons, 10,
                                                callback_group=callback_group)

    def _on_persons(self, msg) -> None:
        from std_msgs.msg import String

        ids = {i for i in msg.ids if valid_id(i)}
        with self.lock:
            if self.stopped:
                return
            for gone in set(self.persons) - ids:
                for sub in self.persons.pop(gone):
                    self.node.destroy_subscription(sub)
                self.links.pop(gone, None)
            for person in sorted(ids - set(self.persons)):
                self.links[person] = {}
                self.persons[person] = [
                    self.node.create_subscription(String, f"{PERSONS}/{person}/{link}",
                                                  lambda m, p=person, k=link: self._on_link(p, k, m), self.latched,
                                                  callback_group=self.group) for link in LINKS]
        self.on_change()

    def _on_link(self, person: str, link: str, msg) -> None:
        with self.lock:
            if person in self.links:
                self.links[person][link] = msg.data.strip()
        self.on_change()

    def of_voice(self, voice: str) -> dict[str, str]:
        """The links of the person whose voice is ``voice`` ({} when no person links it)."""
        with self.lock:
            return next((dict(links) for links in self.links.values() if voice and links.get("voice_id") == voice), {})

    def face_of(self, voice: str) -> str:
        """The face of the person whose voice is ``voice`` ('' when no person links both)."""
        return self.of_voice(voice).get("face_id", "")

    def voiced_faces(self) -> set[str]:
        """The faces that a tracked person links to a voice now."""
        with self.lock:
            return {links["face_id"] for links in self.links.values() if links.get("face_id") and links.get("voice_id")}

    def stop(self) -> None:
        with self.lock:
            for sub in [self.tracked, *(s for subs in self.persons.values() for s in subs)]:
                self.node.destroy_subscription(sub)
            self.persons.clear()
            self.links.clear()
            self.stopped = True


class PersonCrops:
    """The crops of the tracked bodies and faces, on one node, and which of them belong to each voice (``links``).

    ``on_crop(key, msg)`` receives every crop (``key`` "body/<id>" or "face/<id>"); ``crops_of(voice)`` gives the
    keys of its person's crops, body first."""

    def __init__(self, node, on_crop: Callable, qos, links: PersonLinks, callback_group=None):
        from hri_msgs.msg import IdsList

        self.node, self.on_crop, self.qos, self.links, self.group = node, on_crop, qos, links, callback_group
        self.lock = threading.Lock()
        self.crops: dict[str, object] = {}  # "body/<id>" | "face/<id>" -> its crop subscription
        self.stopped = False  # stop() destroyed everything: a list that comes in after subscribes nothing
        self.tracked = [node.create_subscription(IdsList, f"{space}/tracked",
                                                 lambda m, k=kind: self._on_tracked_crops(k, m), 10,
                                                 callback_group=callback_group)
                        for kind, space in CROPPED.items()]

    def _on_tracked_crops(self, kind: str, msg) -> None:
        from sensor_msgs.msg import Image

        ids = {f"{kind}/{i}" for i in msg.ids if valid_id(i)}
        with self.lock:
            if self.stopped:
                return
            mine = {key for key in self.crops if key.startswith(f"{kind}/")}
            for gone in mine - ids:
                self.node.destroy_subscription(self.crops.pop(gone))
            for key in sorted(ids - mine):
                self.crops[key] = self.node.create_subscription(
                    Image, f"{CROPPED[kind]}/{key.partition('/')[2]}/cropped",
                    lambda m, k=key: self.on_crop(k, m), self.qos, callback_group=self.group)

    def crops_of(self, voice: str) -> list[str]:
        """The crop keys of the person whose voice is ``voice``, body first ([] when no person links it)."""
        links = self.links.of_voice(voice)
        return [f"{kind}/{links[f'{kind}_id']}" for kind in CROPPED if links.get(f"{kind}_id")]

    def stop(self) -> None:
        with self.lock:
            for sub in [*self.tracked, *self.crops.values()]:
                self.node.destroy_subscription(sub)
            self.crops.clear()
            self.stopped = True
