"""ddvlm emotion node: transcripts + camera in, ddvlm_msgs/EmotionDistribution out on /emotion.

Lifecycle: ``__init__`` declares parameters; ``on_configure`` loads the model (refuses with a clear
error if it cannot) and creates publishers; ``on_activate`` subscribes and starts the workers;
``on_deactivate`` / ``on_cleanup`` undo that in reverse and release the model's GPU memory.
Callbacks only enqueue (see ddvlm_ros.pipeline): the executor never runs a model.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import deque
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Header, String

from ddvlm_core.arrival_order import LATE_MAX_S, REVISED_FLAG
from ddvlm_core.speech_timing import AsrTiming
from ddvlm_core.voice_activity import VoiceActivity, longest_s
from ddvlm_ros.convert import (AsrJson, asr_confidence, asr_json, compressed_msg_to_rgb, cv_bridge_problem,
                               image_msg_to_rgb, messages_import, parse_transcript, prediction_to_msg, sec_to_stamp,
                               stamp_to_sec, use_cv_bridge, whisper_msgs_available, whisper_transcription)
from ddvlm_ros.compat import add_after_set_parameters
from ddvlm_ros.msgs import EmotionDistribution, ResetConversation, Utterance
from ddvlm_ros.params import (PARAMS, PARAMS_BY_NAME, coerce, params_files, parameter_errors,
                              unapplied_params_files)
from ddvlm_ros.pipeline import CLOCK_SKEW_S, ROBOT_SPEAKER, EmotionPipeline, Result, UtteranceIn
from ddvlm_ros.qos import (NO_PUBLISHER_EVENTS, NO_SUBSCRIPTION_EVENTS, graph_endpoints, incompatible_qos, peer_name,
                           type_name)
from ddvlm_ros.ros4hri import FACES, VOICES, mirrored, spoken_locale
from ddvlm_ros.spin import spin_until_shutdown

DIAGNOSTIC_NAME = "/social_perception/ddvlm/emotion"
DEFAULT_NODE = "/ddvlm_emotion"  # the launch file's node, in no namespace: its status is DIAGNOSTIC_NAME as it is
SLOW_LATENCY_MS = 500.0  # WARN above this p90 text latency ...
SLOW_MIN_ANSWERS = 2  # ... when at least this many answers took longer: the p90 of 10 or fewer answers is the slowest,
# and one slow answer (a long prompt, the machine busy for a moment) would outrank every other fault for 10 answers
TIME_JUMP_BACK_S = 1.0  # ROS time going back more than this (a bag played again) starts frames and contexts afresh
NO_FINAL_WARN_S = 30.0  # utterance messages this long, none final: WARN that only final ones are classified
LIVE_PIPELINE_SETTINGS = ("caption_timeout_s", "idle_timeout_s", "max_conversations",
                          "context_only_speakers", "drop_self_echoes", "quote_speech",
                          "revise_answers", "asr_min_confidence",
                          "end_unpunctuated_turns")  # EmotionPipeline attributes
CAMERA_TOPICS = ("image_topic", "compressed_image_topic")  # subscribed only when a captioner captions frames
CAPTION_INPUTS = (*CAMERA_TOPICS, "voice_activity_topic", "robot_speaking_topic")  # and so are the VAD's on/off
# and whether the robot speaks, which only place the windows of the captions
NO_IMAGES_DECODED = "none: no captioner, the camera is not read"  # image_decoder of a text-only node
TRANSCRIPT_TOPICS = ("transcript_topic", "utterance_topic", "whisper_topic")  # any one is enough
OPTIONAL_INPUTS = ("robot_speech_topic", "voice_activity_topic", "robot_speaking_topic")  # most robots have none of
# these, so their silence is no fault; publishers of another type on them are (a remap onto the wrong topic)
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


def partials_only_for(counts: dict[str, int], first_partial: float | None) -> float | None:
    """Seconds since the first partial result (monotonic ``first_partial``) when they have come for NO_FINAL_WARN_S
    and ``counts`` holds no "final" one (nothing of that input is classified); else None."""
    if counts["final"] or first_partial is None or time.monotonic() - first_partial < NO_FINAL_WARN_S:
        return None
    return time.monotonic() - first_partial


def diagnostic_name(fully_qualified_name: str) -> str:
    """The node's status name in /diagnostics: DIAGNOSTIC_NAME for the launch file's node in no namespace; any other
    node (``namespace:=robot1``, a second node for a second microphone) adds its fully qualified name after it,
    as diagnostic_updater's ``use_fqn`` does, since diagnostic_aggregator and rqt_robot_monitor key statuses by
    name and would show two nodes' as one."""
    if fully_qualified_name == DEFAULT_NODE:
        return DIAGNOSTIC_NAME
    return f"{DIAGNOSTIC_NAME}: {fully_qualified_name}"


def default_model_dir() -> Path:
    from ddvlm_core.cli import DEFAULT_CHECKPOINT

    return DEFAULT_CHECKPOINT


class EmotionNode(LifecycleNode):
    def __init__(self, node_name: str = "ddvlm_emotion", **kwargs):
        super().__init__(node_name, **kwargs)
        for p in PARAMS:  # typed by ddvlm_ros.params.coerce, so a wrong type is a clear configure error, not a crash
            self.declare_parameter(p.name, p.default, ParameterDescriptor(
                description=p.described(), additional_constraints=p.constraint(), dynamic_typing=True))
        add_after_set_parameters(self, self._on_set_parameters, self._after_set_parameters)
        self._values_in_use: dict[str, object] = {}  # parameters read at configure / activate: the values read
        self.pipeline: EmotionPipeline | None = None
        self.recognizer = None
        self.load_error = ""
        self.captioner_check = ""  # the captioner against the one that trained the visual branch, set at configure
        self.image_decoder = ""  # what decodes raw images: cv_bridge where it works, else ddvlm's converter; configure
        self.model_name = ""
        self.quantization = "none"
        self.compiled = "no"
        self._subs: list = []
        self._silence_timer = None
        self._diag_timer = None
        self._pub = None
        self._diag_pub = None
        self._counter = 0
        self._last_input: dict[str, float] = {}
        self._silence_warned: set[str] = set()
        self._mistyped: dict[str, str] = {}  # optional input topic -> why its publishers are not read (another type)
        self._topics_in_use: set[str] = set()  # input topics that had a publisher or a message since activate
        self._utterance_msgs = {"final": 0, "partial": 0}
        self._transcript_delays: deque[float] = deque(maxlen=200)  # ROS time at arrival minus the end stamp, s
        self._whisper_times: deque[tuple[float, float]] = deque(maxlen=200)  # whisper_ros: (audio_time,
        #                                                  transcription_time) of the latest valid Transcriptions, s
        self._first_partial: float | None = None  # monotonic time of the first non-final utterance message
        self._no_final_warned = False
        self._json = {"final": 0, "partial": 0, "empty": 0, "unread": 0}  # transcripts that were ASR JSON objects
        self._json_field = ""  # the field the latest one's text came from
        self._first_json_partial: float | None = None  # monotonic time of the first JSON partial result
        self._input_types: dict[str, str] = {}  # input topic -> the type it takes, e.g. sensor_msgs/msg/Image
        self._qos_mismatch: dict[str, str] = {}  # topic -> its peers whose QoS cannot match the node's (qos.py)
        self._reliability_param: dict[str, str] = {}  # input topic (resolved) -> the parameter setting its reliability
        self._bad_frames = 0
        self._last_output = ""  # the last /emotion answer, in words (diagnostics)
        self._active = False
        self._hri = None  # ddvlm_ros.ros4hri.Ros4HriBridge while active with ros4hri: true
        self._persons = None  # ddvlm_ros.ros4hri.PersonLinks while active with ros4hri: true, and a captioner or
        # face_expression: true
        self._crops = None  # ddvlm_ros.ros4hri.PersonCrops while active with ros4hri: true and a captioner
        self._face_links = None  # self._persons while active with face_expression: true (answers go on faces too)
        self._faces_shared: dict[str, str] = {}  # face expression topic -> the other nodes publishing on it
        self._last_voice_speech: float | None = None  # monotonic time of the last ROS4HRI speech result
        self._activity: VoiceActivity | None = None  # voice_activity_topic's VAD while it is read (a captioner)
        self._windows_by = {"vad": 0, "estimate": 0}  # transcripts a VAD could place: by it, or by their words
        self._hri_status = "off"
        self._bond = None  # ddvlm_ros.bond.LifecycleBond, from the first activate where the bond messages import
        self._bond_state = "inactive"  # what diagnostics say of the bond while there is none in use ('' = in use)
        self.params_files_unapplied: list[str] = []  # params files that gave this node nothing (check_params_files)
        self._inputs_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self.create_service(ResetConversation, "~/reset_conversation", self._on_reset_conversation,
                            callback_group=self._inputs_group)
        self._time_jump = self.get_clock().create_jump_callback(  # the handle must live as long as the node
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-int(TIME_JUMP_BACK_S * 1e9)),
                          on_clock_change=False), post_callback=self._on_time_jump)

    def check_params_files(self, argv: list[str]) -> list[str]:
        """The params files of the command line ``argv`` that gave this node none of their parameters (rcl says
        nothing of it: a file keyed ``ddvlm_emotion:`` is ignored by a node in a namespace): a WARN for each, and
        ``params_files_unapplied`` in the diagnostics."""
        self.params_files_unapplied = unapplied_params_files(params_files(argv), self.get_fully_qualified_name())
        for why in self.params_files_unapplied:
            self.get_logger().warning(f"params file not applied: {why}")
        return self.params_files_unapplied

    def p(self, name: str):
        """Parameter ``name`` as its declared type (ValueError if it has another: see parameter_errors)."""
        return coerce(name, self.get_parameter(name).value)

    def parameter_errors(self, names: list[str] | None = None) -> list[str]:
        """Why the current values of ``names`` (default: all parameters) are refused; [] if they are not."""
        return parameter_errors({n: self.get_parameter(n).value for n in names or PARAMS_BY_NAME})

    def _on_set_parameters(self, params) -> SetParametersResult:
        """``ros2 param set`` with a wrong type is refused with the reason (values are read at configure)."""
        errors = parameter_errors({q.name: q.value for q in params if q.name in PARAMS_BY_NAME})
        return SetParametersResult(successful=not errors, reason="; ".join(errors))

    def _after_set_parameters(self, params) -> None:
        """A value set on a running node: the live settings change at once; one read at configure or activate
        waits for the next one, and the log says so (``ros2 param set`` alone answers "successful")."""
        for q in params:
            param = PARAMS_BY_NAME.get(q.name)
            if param is None:
                continue
            if q.name in LIVE_PIPELINE_SETTINGS and self.pipeline is not None:
                setattr(self.pipeline, q.name, coerce(q.name, q.value))
            elif q.name == "diagnostics_period_s" and self._diag_timer is not None:
                self.destroy_timer(self._diag_timer)
                self._diag_timer = self.create_timer(coerce(q.name, q.value), self.publish_diagnostics,
                                                     callback_group=self._diag_group)
            elif q.name in self._values_in_use and q.value != self._values_in_use[q.name]:
                steps = "deactivate, then activate" if param.applies == "activate" else \
                    "deactivate, then cleanup, configure, activate"
                self.get_logger().warning(
                    f"{q.name} = {q.value!r} takes effect at the next {param.applies} (in use: "
                    f"{self._values_in_use[q.name]!r}): ros2 lifecycle set {self.get_fully_qualified_name()} {steps}")
            elif param.applies == "start":
                self.get_logger().warning(f"{q.name} is read when the node starts: setting it now changes nothing")

    def _read(self, stage: str) -> None:
        """Record the values of the parameters read at ``stage`` (configure / activate), as now in use."""
        self._values_in_use |= {p.name: self.get_parameter(p.name).value for p in PARAMS if p.applies == stage}

    def pending_parameters(self) -> list[str]:
        """Parameters set since they were read (at configure or activate) whose new values wait for the next one."""
        return [name for name, value in self._values_in_use.items() if self.get_parameter(name).value != value]

    # ---- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            errors = self.parameter_errors()
            if errors:
                raise ValueError("; ".join(errors))
            check_device(self.p("device"))
            with single_cpu_thread():  # loading must not start an OpenMP team here: see cpu_threads_setup
                self.recognizer = self._load_recognizer()
                captioner = self._load_captioner()
        except Exception as e:  # noqa: BLE001 - a loader may raise anything (a captioner's truncated safetensors:
            # SafetensorError; a bad config.json: transformers' own errors): configure fails with the reason
            self.load_error = f"{type(e).__name__}: {e}"
            self.get_logger().error(f"configure failed: {self.load_error}")
            self._ensure_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self.load_error = ""
        self._read("configure")
        # Only a captioner's node decodes images. rosdep installs apt's cv_bridge, which crashes under NumPy 2:
        # probing it costs a child process, and its warning would be noise where no camera is read.
        self.image_decoder = NO_IMAGES_DECODED
        if captioner is not None:
            self.image_decoder = use_cv_bridge()
            if cv_bridge_problem() not in ("", "not installed"):
                self.get_logger().warning(f"cv_bridge does not work here: raw images are decoded by "
                                          f"{self.image_decoder}")
        self._pub = self.create_lifecycle_publisher(
            EmotionDistribution, self.p("emotion_topic"),
            QoSProfile(depth=self.p("emotion_qos_depth"), history=HistoryPolicy.KEEP_LAST),
            event_callbacks=NO_PUBLISHER_EVENTS)  # rclpy's create_lifecycle_publisher calls Node's create_publisher
        self.pipeline = EmotionPipeline(
            self.recognizer, self._on_result, captioner, decode_frame=self._decode_frame,
            max_turns=self.p("max_context_turns"), idle_timeout_s=self.p("idle_timeout_s"),
            max_conversations=self.p("max_conversations"),
            frame_buffer_s=self.p("frame_buffer_s"), frame_rate_hz=self.p("frame_rate_hz"),
            frames_per_window=self.p("frames_per_window"),
            caption_timeout_s=self.p("caption_timeout_s"), log=self._log, clock=self._now,
            context_only_speakers=self.p("context_only_speakers"), drop_self_echoes=self.p("drop_self_echoes"),
            quote_speech=self.p("quote_speech"), revise_answers=self.p("revise_answers"),
            asr_min_confidence=self.p("asr_min_confidence"), end_unpunctuated_turns=self.p("end_unpunctuated_turns"),
            thread_setup={"inference": cpu_threads_setup(self.p("cpu_threads")), "caption": cpu_threads_setup(1)})
        self._ensure_diagnostics()
        self.get_logger().info(f"configured: model {self.model_name}, quantization {self.quantization}, "
                               f"captioner {getattr(captioner, 'name', 'none')}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._to_device(self.p("device"))
        self.pipeline.start()
        try:
            self._compile()
        except Exception as e:  # noqa: BLE001 - any compiler failure: stay inactive and say why
            self.pipeline.stop()
            self.load_error = f"compile failed: {type(e).__name__}: {str(e)[:300]} (set compile:=false)"
            self.get_logger().error(self.load_error)
            return TransitionCallbackReturn.FAILURE
        self.load_error = ""
        self.pipeline.robot_speaker = ROBOT_SPEAKER if self.p("robot_speech_topic") else ""  # before its first message
        self._activity = VoiceActivity() if self.p("voice_activity_topic") and self.captions_frames() else None
        self._windows_by = {"vad": 0, "estimate": 0}
        self._subscribe()
        now = time.monotonic()
        self._last_input = {topic: now for topic in self._input_topics()}
        self._last_voice_speech = None
        self._silence_warned.clear()
        self._mistyped.clear()
        self._topics_in_use.clear()
        self._silence_timer = self.create_timer(1.0, self._check_inputs, callback_group=self._diag_group)
        self._start_ros4hri()
        self._read("activate")
        self._active = True
        self.get_logger().info(self.wiring())
        self._start_bond()
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._stop_bond("inactive")
        if self._hri is not None:
            self._hri.stop()
            self._hri = None
        if self._crops is not None:
            self._crops.stop()
            self._crops = None
            self.pipeline.crops_of = lambda voice: []
        if self._persons is not None:
            self._persons.stop()
            self._persons = self._face_links = None
        self._faces_shared.clear()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._reliability_param.clear()
        if self._silence_timer is not None:
            self.destroy_timer(self._silence_timer)
            self._silence_timer = None
        self._mistyped.clear()  # read again at activate
        self._qos_mismatch.clear()
        if self.pipeline is not None:
            self.pipeline.stop()
        self._to_device("cpu")  # frees GPU memory while inactive
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        self.pipeline = None
        self.recognizer = None
        self._values_in_use = {}
        self._release_cuda()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_bond("shut down")
        if self.pipeline is not None:
            self.pipeline.stop()
        return TransitionCallbackReturn.SUCCESS

    def _start_bond(self) -> None:
        """Keep the bond a lifecycle manager checks its active nodes by (nav2_lifecycle_manager; ddvlm_ros.bond),
        where the bond messages import, unless the node started itself (autostart: true), which no manager does:
        it would find the node already configured and fail its startup."""
        from ddvlm_ros.bond import NOT_INSTALLED, OFF, SELF_STARTED, LifecycleBond

        if self.p("autostart"):
            self._bond_state = SELF_STARTED
            return
        period = self.p("bond_heartbeat_period")
        if period <= 0 or not messages_import("bond"):
            self._bond_state = OFF if period <= 0 else NOT_INSTALLED
            return
        if self._bond is None:
            self._bond = LifecycleBond(self, callback_group=self._diag_group)
        self._bond_state = ""
        self._bond.start(period)

    def _stop_bond(self, why: str) -> None:
        if self._bond is not None:
            self._bond.stop(why)

    # ---- loading ----------------------------------------------------------------------------
    def _load_recognizer(self):
        from ddvlm_core.cli import quiet_transformers
        from ddvlm_core.inference import EmotionRecognizer

        quiet_transformers()  # no progress bars or per-weight load reports in a robot's log

        path = Path(self.p("model_dir") or default_model_dir())
        if not path.is_dir():
            raise FileNotFoundError(f"model_dir {str(path)!r} does not exist")
        recognizer = EmotionRecognizer.from_checkpoint(path, device="cpu",
                                                       load_caption_embedder=self.p("captioner") != "none")
        self.model_name = str(path)
        # a freshly loaded model: quantized below and compiled at activate when the parameters say so
        self.quantization, self.compiled = "none", "no"
        if self.p("quantized"):
            import torch

            from ddvlm_core.quantization import WOQConfig

            try:
                config = WOQConfig(kernel=self.p("woq_kernel"))
            except ValueError as e:
                raise RuntimeError(f"woq_kernel: {e}") from None
            recognizer.model.quantize(config)  # merges a LoRA adapter, checks the kernel on this device first
            kernel, dtype = config.resolved(torch.device(self.p("device")))
            self.quantization = f"woq-int8 ({kernel}, {str(dtype).removeprefix('torch.')} activations)"
        return recognizer

    def _load_captioner(self):
        self.captioner_check = ""
        kind = self.p("captioner")
        if kind == "none":
            return None
        if not self.recognizer.has_visual_branch:
            self.get_logger().warning(f"captioner {kind!r} ignored: the checkpoint has no trained visual branch")
            return None
        if kind == "cue":
            from ddvlm_core.captioner import CueCaptioner

            captioner = CueCaptioner(self.p("frames_per_window"))
        elif kind == "qwen":
            from ddvlm_core.captioner import QwenVLCaptioner

            captioner = QwenVLCaptioner(self.p("captioner_model_dir"), device=self.p("device"),
                                        frames_per_window=self.p("frames_per_window"))
        else:
            raise ValueError(f"captioner must be none, cue or qwen, got {kind!r}")
        self.captioner_check = self.recognizer.captioner_check(captioner)
        if self.captioner_check not in ("matches training", "training captioner unknown"):
            self.get_logger().warning(f"captioner {captioner.name} {self.captioner_check}: its captions are not like "
                                      "those the visual branch was trained on")
        return captioner

    def _compile(self) -> None:
        """compile: torch.compile the text model and run its first calls now, on the device it will run on,
        so that no utterance waits for the compiler (about a minute on a 2-core CPU; cached afterwards)."""
        if not self.p("compile"):
            return
        import torch

        from ddvlm_core.model import cuda_graph_note

        mode = self.p("compile_mode")
        self.get_logger().info(f"compiling the text model for {self.recognizer.device} (torch.compile, {mode}) ...")
        self.recognizer.model.compile_text(mode)
        # on the inference worker: inductor bakes the thread count it compiles with into its CPU kernels
        seconds, threads = self.pipeline.call(lambda: (self.recognizer.warm_up(), torch.get_num_threads()))
        how = "dynamo cudagraphs (no inductor)" if mode == "cudagraphs" else f"inductor {mode}"
        graphs = cuda_graph_note(mode, self.recognizer.device, self.recognizer.cuda_graph_skips)
        self.compiled = (f"{how} on {self.recognizer.device}, {threads} threads (warm-up {seconds:.0f} s)"
                         + (f"; {graphs}" if graphs else ""))
        if graphs and graphs != "CUDA graphs recorded":
            self.get_logger().warning(f"text model compiled: {self.compiled}")
        else:
            self.get_logger().info(f"text model compiled: {self.compiled}")

    def _to_device(self, device: str) -> None:
        if self.recognizer is None or self.recognizer.device == device:
            return
        self.recognizer.model.to(device)
        self.recognizer.device = device
        if device == "cpu":
            self._release_cuda()

    @staticmethod
    def _release_cuda() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- inputs ---------------------------------------------------------------------------------
    def _input_topics(self) -> list[str]:
        """The topics the node subscribes while active (the camera's only when it captions: ``captions_frames``)."""
        camera = map(self.p, CAPTION_INPUTS) if self.captions_frames() else ()
        return [t for t in (self.p("transcript_topic"), self.p("utterance_topic"), self._whisper_topic(),
                            *camera, self.p("robot_speech_topic")) if t]

    def wiring(self) -> str:
        """What the active node reads and where it answers, by the topics' resolved names (remaps and namespace
        applied), for the log at activate: whoever wires it sees at once whether the remaps took."""
        reads = [f"{sub.topic_name} ({type_name(sub.msg_type)})" for sub in self._subs]
        if self._hri is not None:
            reads.append(f"ROS4HRI voices ({VOICES}/tracked)"
                         + (", their persons' body and face crops" if self._crops is not None else ""))
        camera = "" if self.captions_frames() else "; camera not subscribed (no captioner: answers from text alone)"
        answers = self._pub.topic_name if self._pub is not None else "nothing"
        if self._hri is not None:
            answers += f", {VOICES}/<id>/expression" + (f", {FACES}/<id>/expression of their persons' faces"
                                                        if self._face_links is not None else "")
        return f"active: reading {', '.join(reads) or 'nothing'}{camera}; answers on {answers}"

    def captions_frames(self) -> bool:
        """Whether a captioner captions camera frames: one is configured and the checkpoint has a visual branch to
        read its captions. Without one the answers come from text alone, and the node leaves the camera topics
        unsubscribed: a camera stream taken into Python and buffered for ``frame_buffer_s`` costs CPU time and
        memory for nothing (92 MB at 640x480 rgb8 and 5 Hz), and a camera driver that publishes only while its
        topic has a subscriber can rest."""
        return self.pipeline is not None and self.pipeline.captioner is not None

    def _whisper_topic(self) -> str:
        """The whisper_topic parameter where whisper_msgs is installed, else '' (that input off)."""
        return self.p("whisper_topic") if whisper_msgs_available() else ""

    def _qos(self, prefix: str) -> QoSProfile:
        return QoSProfile(depth=self.p(f"{prefix}_qos_depth"), history=HistoryPolicy.KEEP_LAST,
                          reliability=RELIABILITY[self.p(f"{prefix}_qos_reliability")])  # checked at configure

    def _subscribe(self) -> None:
        specs = [("transcript_topic", String, self._on_transcript, "transcript"),
                 ("utterance_topic", Utterance, self._on_utterance, "transcript"),
                 *([("whisper_topic", whisper_transcription(), self._on_whisper, "transcript")]
                   if self._whisper_topic() else []),
                 ("image_topic", Image, self._on_image, "image"),
                 ("compressed_image_topic", CompressedImage, self._on_compressed, "image"),
                 ("robot_speech_topic", String, self._on_robot_speech, "transcript"),
                 ("voice_activity_topic", Bool, self._on_voice_activity, "transcript"),
                 ("robot_speaking_topic", Bool, self._on_robot_speaking, "transcript")]
        for param, msg_type, callback, qos in specs:
            if self.p(param) and (param not in CAPTION_INPUTS or self.captions_frames()):
                self._input_types[self.p(param)] = type_name(msg_type)
                self._subs.append(self.create_subscription(msg_type, self.p(param), callback, self._qos(qos),
                                                           callback_group=self._inputs_group))
                self._reliability_param[self._subs[-1].topic_name] = f"{qos}_qos_reliability"

    def _in_use(self, name: str):
        """The value of parameter ``name`` that the node runs with: the one read at configure or activate (a new
        value set meanwhile waits for it), else the current one."""
        return self._values_in_use.get(name, self.p(name))

    def _seen(self, param: str) -> None:
        topic = self._in_use(param)  # the subscribed topic, also after a new name was set but not yet applied
        self._last_input[topic] = time.monotonic()
        self._silence_warned.discard(topic)
        self._topics_in_use.add(topic)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _next_id(self) -> str:
        self._counter += 1
        return str(self._counter)

    def _on_transcript(self, msg: String) -> None:
        self._seen("transcript_topic")
        try:
            payload = asr_json(msg.data)
        except ValueError as e:
            self._json["unread"] += 1
            self.get_logger().warning(f"transcript skipped: {e}", once=True)  # json_transcripts counts the others
            return
        if payload is None:
            self._submit_plain_text(*parse_transcript(msg.data, self.p("default_speaker"), self.p("speaker_prefix")),
                                    "transcript")
        elif self._final_json(payload):
            self._submit_plain_text(payload.speaker or self.p("default_speaker"), payload.text, "transcript",
                                    payload.confidence)

    def _on_whisper(self, msg) -> None:
        """whisper_ros' Transcription: a transcript of ``default_speaker`` that says how long its audio lasted and how
        long transcribing it took, so that its words' window is known, not estimated from their number
        (AsrTiming.transcribed); with values that cannot be times, it is estimated, and the node says so once."""
        self._seen("whisper_topic")
        if 0 <= msg.audio_time < math.inf and 0 <= msg.transcription_time < math.inf:
            self._whisper_times.append((msg.audio_time, msg.transcription_time))
        self._submit_plain_text(self.p("default_speaker"), msg.text, "whisper",
                                transcribed=(msg.audio_time, msg.transcription_time))

    def _whisper_summary(self) -> str:
        """What /diagnostics says of whisper_ros' Transcriptions: off, or the medians of the latest ones' audio and
        transcription times and their ratio, the ASR's real-time factor."""
        if not self._whisper_topic():
            return "off" + ("" if whisper_msgs_available() else " (whisper_msgs is not installed)")
        latest = list(self._whisper_times)  # a copy: the executor appends to it meanwhile
        if not latest:
            return "none yet"
        audio, taken = (sorted(times)[len(times) // 2] for times in zip(*latest))
        rtf = sorted(t / a for a, t in latest if a > 0)
        return (f"the latest {len(latest)}: median audio {audio:.2f} s, transcribed in {taken:.2f} s"
                + (f" (real-time factor {rtf[len(rtf) // 2]:.2f})" if rtf else ""))

    def _final_json(self, payload: AsrJson) -> bool:
        """Count a transcript that is an ASR's JSON result object; True when it is a final result with words. A
        partial result is skipped (only final ones are classified), the first one with a WARN; an empty one (Vosk's
        {"text": ""} on silence) is no utterance."""
        self._json_field = payload.form
        if not payload.final:
            self._json["partial"] += 1
            if self._first_json_partial is None:
                self._first_json_partial = time.monotonic()
                self.get_logger().warning(
                    f'transcript carries partial results as JSON ({{"{payload.form}": ...}}, as Vosk\'s '
                    "PartialResult): they are skipped, as only final results are classified; remap transcript onto "
                    "the ASR's final results (voskros: ~/result, not ~/partial; ros-vosk: "
                    "speech_recognition/final_result)")
            return False
        self._json["final" if payload.utterance else "empty"] += 1
        return payload.utterance

    def _on_robot_speech(self, msg: String) -> None:
        """What the robot says: a turn of ROBOT_SPEAKER (context only: the pipeline takes its TTS markup out)."""
        self._seen("robot_speech_topic")
        self._submit_plain_text(ROBOT_SPEAKER, msg.data, "robot_speech")

    def _submit_plain_text(self, speaker: str, text: str, source: str, confidence: float = 0.0,
                           transcribed: tuple[float, float] | None = None) -> None:
        """A text without stamps that came on input ``source`` now (its stamp): its camera window when its words were
        said (estimated by ``asr_timing``, or from ``transcribed``: how long its audio lasted and how long
        transcribing it took), the next id of the node's counter, the conversation_id parameter's conversation
        (``confidence``: the ASR's in it, 0 = not given)."""
        received, end = time.monotonic(), self._now()
        header = Header(stamp=sec_to_stamp(end, type(Header().stamp)), frame_id="")
        said = None
        if transcribed is not None:
            try:
                said = self.asr_timing().transcribed(*transcribed, end)
            except ValueError as e:
                self.get_logger().warning(f"{source}: {e}; its camera window is estimated from its words", once=True)
        start, said_until = said or self._window(text, None, end, stamped=False)
        if said is None and source == "transcript":  # what the robot says is not the people's speech the VAD heard
            start, said_until = self._heard(self._activity, text, start, said_until, end, came=end)
        self.pipeline.submit(UtteranceIn(self.p("conversation_id"), self._next_id(), speaker, text, start, end,
                                         received, header, source=source, said_until=said_until, heard=end,
                                         asr_confidence=confidence))

    def asr_timing(self) -> AsrTiming:
        """How the ASR's transcripts follow the words (text_window_s, text_asr_endpoint_s, text_asr_rtf): the camera
        window of a transcript without stamps."""
        return AsrTiming(self.p("text_window_s"), self.p("text_asr_endpoint_s"), self.p("text_asr_rtf"))

    def _on_voice_activity(self, msg: Bool) -> None:
        """voice_activity_topic: whether the VAD hears speech now (timed on arrival: std_msgs/Bool has no stamp)."""
        self._seen("voice_activity_topic")
        if self._activity is not None:
            self._activity.hear(bool(msg.data), self._now())

    def _on_robot_speaking(self, msg: Bool) -> None:
        """robot_speaking_topic: whether the robot is speaking now; what the VADs hear meanwhile is the robot."""
        self._seen("robot_speaking_topic")
        speaking, now = bool(msg.data), self._now()
        if self._activity is not None:
            self._activity.robot(speaking, now)
        if self._hri is not None:
            self._hri.robot(speaking, now)

    def _heard(self, activity: VoiceActivity | None, text, start: float, said_until: float | None, end: float,
               came: float) -> tuple[float, float | None]:
        """(start, said_until) of a transcript that came at ``came``: on the speech a VAD heard (``activity``; None:
        no VAD), picked by its window as ``_window`` estimated it (``start``, ``said_until``, ``end``), which stays
        where the VAD heard no fresh speech. Counted for /diagnostics (voice_activity)."""
        if activity is None:
            return start, said_until
        estimate = (start, end if said_until is None else said_until)
        window = activity.heard(came, self.p("text_asr_endpoint_s"), estimate, longest_s(text))
        self._windows_by["vad" if window else "estimate"] += 1
        return window or (start, said_until)

    def _voice_activity_summary(self) -> str:
        """What /diagnostics says of the VADs that place transcripts' camera windows."""
        if not self.captions_frames():
            return "not read: no captioner"
        topic = self._in_use("voice_activity_topic")
        vads = ([self.resolve_topic_name(topic)] if self._activity else []) + (
            [f"{VOICES}/<id>/is_speaking"] if self._hri is not None else [])
        if not vads:
            return "off"
        placed, estimated = self._windows_by["vad"], self._windows_by["estimate"]
        summary = (f"{' and '.join(vads)}: {placed} transcript windows placed on the speech heard, {estimated} "
                   "estimated from their words (no fresh speech heard)")
        changes = (self._activity.changes if self._activity else 0) + (self._hri.vad_changes() if self._hri else 0)
        if changes:
            return summary
        if self._activity is None:
            return summary + "; no VAD message yet"
        if topic in self._mistyped:
            return summary + f"; no VAD message yet ({vads[0]} is not read: {self._mistyped[topic]})"
        unpublished = not self._publisher_types(topic, unreadable=[])
        return summary + "; no VAD message yet" + (f" ({vads[0]} has no publisher)" if unpublished else "")

    def _window(self, text, start: float | None, end: float, stamped: bool) -> tuple[float, float | None]:
        """(start, said_until) of the words of a final transcript that ended at ``end`` (its stamp when ``stamped``,
        else when it came: then its words ended earlier, by the ASR's delay), ``start`` when it has a start stamp."""
        timing = self.asr_timing()
        until = end if stamped else timing.said(text, end)[1]
        start = start if start else timing.started(text, until)
        return start, None if stamped else max(until, min(start, end))

    def _on_utterance(self, msg: Utterance) -> None:
        self._seen("utterance_topic")
        received = time.monotonic()
        self._utterance_msgs["final" if msg.is_final else "partial"] += 1
        if not msg.is_final:  # streaming: caption the frames so far while the person is still speaking
            if self._first_partial is None:
                self._first_partial = received
            elif not self._no_final_warned and (why := self._no_final()):
                self._no_final_warned = True
                self.get_logger().warning(why)
            start = stamp_to_sec(msg.start)
            if start:
                self.pipeline.prefetch(UtteranceIn(msg.conversation_id or self.p("conversation_id"), msg.utterance_id,
                                                   msg.speaker_id, msg.text, start, self._now(), received))
            return
        stamped = stamp_to_sec(msg.end) or stamp_to_sec(msg.header.stamp)
        end = self._stamped_end(stamped)
        start, said_until = self._window(msg.text, stamp_to_sec(msg.start), end, bool(stamped))
        if not stamped and not stamp_to_sec(msg.start):  # it says nothing of its timing: the VAD may
            start, said_until = self._heard(self._activity, msg.text, start, said_until, end, came=end)
        if start > end:
            self.get_logger().warning(f"utterance {msg.utterance_id!r}: start after end, window ignored")
            start = end
        header = Header(stamp=sec_to_stamp(end, type(msg.end)), frame_id=msg.header.frame_id)
        # without an id the node numbers it; its partial results' streaming caption is keyed by its speaker
        stream = "" if msg.utterance_id else f"speaker:{msg.speaker_id}"
        self.pipeline.submit(UtteranceIn(msg.conversation_id or self.p("conversation_id"),
                                         msg.utterance_id or self._next_id(), msg.speaker_id, msg.text,
                                         start, end, received, header, stream_id=stream, end_stamped=bool(stamped),
                                         source="utterance", said_until=said_until, heard=self._now(),
                                         asr_confidence=asr_confidence(msg.confidence)))

    def _stamped_end(self, stamped: float) -> float:
        """The end of a final transcript: its stamp (``stamped``; its delay after it is kept for the diagnostics),
        else now."""
        now = self._now()
        if not stamped:
            return now
        self._transcript_delays.append(now - stamped)
        return stamped

    def _transcript_delay(self) -> tuple[str, float | None]:
        """(what /diagnostics says of the delays of stamped transcripts, their median in s; '' and None before
        any): how long after an utterance ended its transcript reached the node."""
        delays = sorted(self._transcript_delays)
        if not delays:
            return "", None
        p50, p90 = delays[len(delays) // 2], delays[min(len(delays) - 1, int(0.9 * len(delays)))]
        return (f"p50 {p50:+.2f} s, p90 {p90:+.2f} s (the latest {len(delays)} stamped transcripts: their end stamp "
                "to their arrival, on this node's clock)"), p50

    def _frame_stamp(self, header) -> float:
        return stamp_to_sec(header.stamp) or self._now()

    def _raw_frame_ok(self, msg: Image) -> bool:
        """Whether a raw image has pixels and all of its rows' bytes (else counted as a bad frame)."""
        if msg.height == 0 or msg.width == 0 or len(msg.data) < msg.step * msg.height:
            self._bad_frames += 1
            return False
        return True

    def _on_image(self, msg: Image) -> None:
        self._seen("image_topic")
        if not self._raw_frame_ok(msg):
            return
        self.pipeline.add_frame(self._frame_stamp(msg.header), ("raw", msg), now=self._now())

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._seen("compressed_image_topic")
        if not msg.data:
            self._bad_frames += 1
            return
        self.pipeline.add_frame(self._frame_stamp(msg.header), ("compressed", msg), now=self._now())

    def _decode_frame(self, item):
        kind, msg = item
        try:
            return image_msg_to_rgb(msg) if kind == "raw" else compressed_msg_to_rgb(msg)
        except Exception:  # a ValueError with the reason (an encoding neither cv_bridge nor our converter knows ...)
            self._bad_frames += 1
            raise

    def create_subscription(self, *args, **kwargs):
        """rclpy's, without QoS event handlers unless given (ddvlm_ros/qos.py: the node destroys subscriptions at
        deactivate and as ROS4HRI voices leave, which a MultiThreadedExecutor does not survive with them);
        ``incompatible_qos`` tells of incompatible peers instead."""
        kwargs.setdefault("event_callbacks", NO_SUBSCRIPTION_EVENTS)
        return super().create_subscription(*args, **kwargs)

    def create_publisher(self, *args, **kwargs):
        """rclpy's, without QoS event handlers unless given (see create_subscription)."""
        kwargs.setdefault("event_callbacks", NO_PUBLISHER_EVENTS)
        return super().create_publisher(*args, **kwargs)

    def _check_inputs(self) -> None:
        self._check_silence()
        self._check_mistyped()
        try:
            endpoints = graph_endpoints(self)
        except Exception:  # noqa: BLE001 - runs on a timer, which must never stop the executor; next time
            return
        self._check_qos(endpoints)
        self._check_faces_shared(endpoints)

    def _check_faces_shared(self, endpoints: dict) -> None:
        """WARN once per face expression topic the node publishes on (``face_expression``) where another node
        publishes too, e.g. a facial-expression classifier: two sources of one face's expression on one topic, which
        a behaviour node reading ``person.face.expression`` cannot tell apart. ``endpoints``: ``graph_endpoints``."""
        hri = self._hri
        if hri is None:
            return
        me, shared = self.get_fully_qualified_name(), {}
        for topic in hri.face_topics():
            if topic not in endpoints:  # a face publisher made since the graph was read: next time
                continue
            others = sorted({peer_name(i) for i in endpoints[topic][1]} - {me})
            if others:
                shared[topic] = ", ".join(others)
                if self._faces_shared.get(topic) != shared[topic]:
                    self.get_logger().warning(f"{topic} is published by {shared[topic]} too: two sources of that "
                                              "face's expression (set face_expression false, or stop the other)")
        self._faces_shared = shared

    def _check_qos(self, endpoints: dict) -> None:
        """WARN once per topic where a peer's QoS cannot match the node's endpoint (``ddvlm_ros.qos``), e.g. a
        best-effort camera driver on a reliable ``image`` subscription: no frame ever comes. ``endpoints``:
        ``graph_endpoints``."""
        mismatch = incompatible_qos(self, endpoints)
        for topic, peers in mismatch.items():
            if self._qos_mismatch.get(topic) != peers:
                param = self._reliability_param.get(topic)
                fix = f"set {param}, or the peer's QoS, to match" if param else "set the peer's QoS to match"
                self.get_logger().warning(f"incompatible QoS on {topic}: {peers}; nothing passes between them ({fix})")
        self._qos_mismatch = mismatch

    def _check_mistyped(self) -> None:
        """WARN once per optional input (``OPTIONAL_INPUTS``: the robot's speech, a VAD, whether the robot speaks)
        whose publishers send another type than it takes: DDS matches none of them, so nothing of theirs ever
        comes, which silence cannot tell (most robots publish none of these). E.g. ``voice_activity_topic`` remapped
        onto a VAD that publishes a level, not a std_msgs/Bool: the camera windows stay estimated from the words."""
        subscribed = [t for t in map(self._in_use, OPTIONAL_INPUTS) if t in self._input_types]
        mistyped = {}
        for topic in subscribed:
            wrong = self._wrong_types(topic, self._publisher_types(topic, unreadable=[]))
            if wrong:
                mistyped[topic] = wrong
                if self._mistyped.get(topic) != wrong:
                    self.get_logger().warning(f"{self.resolve_topic_name(topic)} is not read: {wrong}")
        self._mistyped = mistyped

    def _wrong_types(self, topic: str, types: list[str]) -> str:
        """What ``types`` (of ``topic``'s publishers) that ``topic``'s input does not take, in words ('' if none)."""
        expected = self._input_types.get(topic, "")
        wrong = sorted({t for t in types if t != expected})
        return f"its publishers send {', '.join(wrong)}; this input takes {expected}" if wrong else ""

    def _check_silence(self) -> None:
        """WARN once per input topic silent for input_timeout_s, among the inputs the node needs: transcripts on
        ``transcript``, ``utterance`` or ``transcription``, or ROS4HRI speech (any is enough: the others' silence is
        not reported while one speaks), and, when a captioner uses frames, images on ``image`` or ``image/compressed``
        (the same). Transcripts stop whenever nobody speaks: their silence is reported only while no ASR is on the
        graph to send them (``_asr_on_graph``); a camera streams all the time, and its silence is a fault."""
        limit = self.p("input_timeout_s")
        if limit <= 0:  # off (it may be set so while active)
            self._silence_warned.clear()
            return
        now = time.monotonic()
        for group, heard_elsewhere, silent_when_idle in self._needed_inputs():
            lasts = {topic: self._last_input[topic] for topic in group if topic in self._last_input}
            self._note_topics_in_use(lasts)
            if (not lasts or now - max([*lasts.values(), *heard_elsewhere]) <= limit  # one alternative is heard
                    or silent_when_idle and self._asr_on_graph(group)):  # or nobody speaks
                self._silence_warned -= set(lasts)
                continue
            named = [topic for topic in lasts if topic in self._topics_in_use] or list(lasts)
            self._silence_warned -= set(lasts) - set(named)
            for topic in named:
                last = lasts[topic]
                if topic not in self._silence_warned:
                    self._silence_warned.add(topic)
                    self.get_logger().warning(f"no message on {self.resolve_topic_name(topic)} for {now - last:.0f}s: "
                                              f"{self._why_silent(topic)}")

    def _note_topics_in_use(self, topics) -> None:
        """Remember the ``topics`` that have a publisher now: when their group falls silent, only the alternatives
        that were in use are named (an ASR on transcript that died: not utterance and transcription as well, which
        nobody meant to use); a group none of whose topics ever had one is named whole (wired nowhere)."""
        for topic in set(topics) - self._topics_in_use:
            if self._publisher_types(topic, unreadable=[]):
                self._topics_in_use.add(topic)

    def _needed_inputs(self) -> list[tuple[list[str], list[float], bool]]:
        """The inputs the node needs, each as its alternative topics, when an input other than a topic last did the
        same job, and whether it is silent whenever there is nothing to send: transcripts (ROS4HRI speech does
        their job too; nothing comes while nobody speaks), and camera frames only when a captioner would caption
        them (a camera streams)."""
        voices = [self._last_voice_speech] if self._hri is not None and self._last_voice_speech is not None else []
        groups = [(TRANSCRIPT_TOPICS, voices, True)]
        if self.captions_frames():
            groups.append((CAMERA_TOPICS, [], False))
        return [([t for t in map(self._in_use, names) if t], heard, idle) for names, heard, idle in groups]

    def _asr_on_graph(self, topics: list[str]) -> bool:
        """Whether a node publishes one of the transcript ``topics`` with the type it takes, or, with ROS4HRI, the
        tracked voices: an ASR is there, and its silence means that nobody speaks (a robot in a quiet room), not
        a fault. A wrong remap, an ASR not started or one that died leaves no such publisher."""
        if self._voices_tracked():
            return True
        return any(self._input_types.get(topic, "") in self._publisher_types(topic, unreadable=[]) for topic in topics)

    def _voices_tracked(self) -> bool:
        """With ROS4HRI, whether a node publishes the tracked voices (the voice tracker, often the one ASR)."""
        return self._hri is not None and bool(self._publisher_types(f"{VOICES}/tracked", unreadable=[]))

    def _publisher_types(self, topic: str, unreadable=None) -> list[str]:
        """The type of each publisher of ``topic`` on the ROS graph; ``unreadable`` (e.g. []) instead of the
        exception when the graph cannot be read (these run on a timer, which must never stop the executor)."""
        try:
            return [p.topic_type for p in self.get_publishers_info_by_topic(self.resolve_topic_name(topic))]
        except Exception:  # noqa: BLE001 - rclpy raises several types here
            if unreadable is None:
                raise
            return unreadable

    def _why_silent(self, topic: str) -> str:
        """What the ROS graph says about a silent input: no publisher, publishers of another type (a wrong
        remap, e.g. a compressed image topic on ``image``), or publishers of the right type that sent nothing."""
        expected = self._input_types.get(topic, "")
        try:
            types = self._publisher_types(topic)
        except Exception as e:  # noqa: BLE001 - runs on the diagnostics timer: it must never stop the executor
            return f"the ROS graph could not be read ({type(e).__name__}: {e})"
        if not types:
            return "no node publishes it (check the remapping)" + self._untracked_voices(topic)
        mismatch = self._qos_mismatch.get(self.resolve_topic_name(topic), "")
        return self._wrong_types(topic, types) or (f"{len(types)} publisher(s) of {expected}, nothing received "
                                                   + (f"(incompatible QoS: {mismatch})" if mismatch else
                                                      "(they are idle, or their QoS: see incompatible_qos)"))

    def _untracked_voices(self, topic: str) -> str:
        """With ROS4HRI, what a silent transcript input with no publisher adds: that the voices' speech is not read
        either, as no node publishes the tracked voices (the voice tracker, often the one ASR, is not running)."""
        if self._hri is None or topic not in map(self._in_use, TRANSCRIPT_TOPICS) or self._voices_tracked():
            return ""
        return f"; nor does any node publish {VOICES}/tracked (ros4hri: true), so no voice's speech is read"

    def _on_time_jump(self, jump) -> None:
        if self.pipeline is not None:
            self.pipeline.time_jumped_back(-jump.delta.nanoseconds * 1e-9)
        if self._activity is not None:  # the VAD's speech of a timeline that will not come again
            self._activity.forget()
        if self._hri is not None:
            self._hri.forget_speech()

    def _on_reset_conversation(self, request, response):
        """~/reset_conversation: forget a conversation's context ('' = all), e.g. when a new participant
        comes; utterances received before the call keep theirs (ddvlm_ros.pipeline.EmotionPipeline.reset)."""
        if not self._active or self.pipeline is None:
            response.success, response.message = False, "the node is not active: no context to reset"
        else:
            try:
                response.success, response.message = True, self.pipeline.reset(request.conversation_id)
            except RuntimeError as e:
                response.success, response.message = False, str(e)
        self.get_logger().info(f"reset_conversation: {response.message}")
        return response

    # ---- outputs --------------------------------------------------------------------------------
    def _on_result(self, result: Result) -> None:
        u = result.utterance
        msg = prediction_to_msg(result.prediction, EmotionDistribution, u.header, u.conversation_id,
                                u.utterance_id, u.speaker_id, result.refined, result.latency_ms, u.asr_confidence)
        if self._pub is not None:
            self._pub.publish(msg)
        self._last_output = (f"{u.conversation_id}/{u.utterance_id} {u.speaker_id or '?'}: {msg.top_label} "
                             f"{msg.confidence:.2f}{' (refined)' if result.refined else ''}"
                             f"{' (revised)' if REVISED_FLAG in msg.flags else ''}")
        hri = self._hri
        if hri is not None and u.voice_id and mirrored(result.prediction.flags):
            faces = self._face_links
            hri.publish(u.voice_id, result.prediction, msg.header,
                        face=faces.face_of(u.voice_id) if faces is not None else "")

    # ---- ROS4HRI (ddvlm_ros.ros4hri) ------------------------------------------------------------
    def _start_ros4hri(self) -> None:
        from ddvlm_ros.ros4hri import PersonCrops, PersonLinks, Ros4HriBridge, hri_msgs_available

        if not self.p("ros4hri"):
            self._hri_status = "off"
            return
        if not hri_msgs_available():
            self._hri_status = "requested, but hri_msgs is not installed"
            self.get_logger().warning("ros4hri: true but hri_msgs does not import: ROS4HRI input/output is off")
            return
        if self.captions_frames() or self.p("face_expression"):  # whose body or face a voice's frames should show,
            # whose face its expression is
            self._persons = PersonLinks(self, callback_group=self._inputs_group, on_change=self._sync_faces)
        persons = self._persons
        self._face_links = persons if self.p("face_expression") else None
        self._hri = Ros4HriBridge(self, self._on_voice_final, self._on_voice_incremental, self._next_id, self._now,
                                  self._qos("transcript"), callback_group=self._inputs_group,
                                  busy=lambda: self.pipeline is not None and not self.pipeline.idle(),
                                  voice_activity=self.captions_frames(),
                                  linked_faces=self._face_links.voiced_faces if self._face_links else set)
        self._hri_status = "on"
        if self.captions_frames():
            crops = self._crops = PersonCrops(self, self._on_person_crop, self._qos("image"), persons,
                                              callback_group=self._inputs_group)
            self.pipeline.crops_of = lambda voice: crops.crops_of(voice) if self.p("caption_person_crops") else []

    def _sync_faces(self) -> None:
        """The person manager's links changed: with ``face_expression``, the faces linked to a voice get their
        Expression publishers now, before their first answer (``Ros4HriBridge.sync_faces``)."""
        hri = self._hri
        if hri is not None and self._face_links is not None:
            hri.sync_faces()

    def _on_person_crop(self, key: str, msg: Image) -> None:
        if not self._raw_frame_ok(msg):
            return
        self.pipeline.add_person_frame(key, self._frame_stamp(msg.header), ("raw", msg), now=self._now())

    def _on_voice_final(self, voice: str, msg, start: float | None, uid: str,
                        activity: VoiceActivity | None = None) -> None:
        """A voice's final result; ``start``: when its partial results began; ``activity``: the voice's is_speaking
        (its VAD), which places its window where it heard fresh speech."""
        received = self._last_voice_speech = time.monotonic()
        stamped = stamp_to_sec(msg.header.stamp)
        end = self._stamped_end(stamped)
        start, said_until = self._window(msg.final, start if start is not None and start <= end else None, end,
                                         bool(stamped))
        start, said_until = self._heard(activity, msg.final, start, said_until, end, came=self._now())
        header = Header(stamp=sec_to_stamp(end, type(msg.header.stamp)), frame_id=msg.header.frame_id)
        self.pipeline.submit(UtteranceIn(self.p("conversation_id"), uid, voice, msg.final, start, end, received,
                                         header, voice_id=voice, language=spoken_locale(msg),
                                         end_stamped=bool(stamped), source="voices", said_until=said_until,
                                         heard=self._now(), asr_confidence=asr_confidence(msg.confidence)))

    def _on_voice_incremental(self, voice: str, msg, start: float, uid: str,
                              activity: VoiceActivity | None = None) -> None:
        """A voice's partial result: its frames so far are captioned from when its first partial result came
        (``start``), or from when its VAD (``activity``) heard the utterance begin."""
        self._last_voice_speech = time.monotonic()
        began = activity.began(self._now(), self.p("text_asr_endpoint_s"),
                               longest_s(msg.incremental)) if activity is not None else None
        start = start if began is None else began
        self.pipeline.prefetch(UtteranceIn(self.p("conversation_id"), uid, voice, msg.incremental, start,
                                           self._now(), time.monotonic(), voice_id=voice))

    def _log(self, level: str, text: str) -> None:
        """The pipeline's log. One call site per severity: rclpy's logger raises ValueError when one call site
        logs at another severity than it first did (it keys its logging context by the caller's line)."""
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warn":
            logger.warning(text)
        else:
            logger.info(text)

    def _ensure_diagnostics(self) -> None:
        if self._diag_pub is None:
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            name = "diagnostics_period_s"  # also reached when configure refused this very value
            period = PARAMS_BY_NAME[name].default if self.parameter_errors([name]) else self.p(name)
            self._diag_timer = self.create_timer(period, self.publish_diagnostics, callback_group=self._diag_group)

    def diagnostic_status(self) -> DiagnosticStatus:
        values = {"lifecycle_state": "active" if self._active else "inactive", "model": self.model_name,
                  "quantization": self.quantization, "compiled": self.compiled, "load_error": self.load_error,
                  "bad_frames": self._bad_frames,
                  "ros4hri": self._hri_status + (f" ({len(self._hri.voices)} voices)" if self._hri else ""),
                  "whisper_transcriptions": self._whisper_summary(),
                  "voice_activity": self._voice_activity_summary(),
                  "image_decoder": self.image_decoder,
                  "confidence_calibration": self.recognizer.calibration if self.recognizer else "",
                  "lifecycle_bond": self._bond_state or self._bond.state}
        level, message = DiagnosticStatus.OK, "running"
        delay_text, delay = self._transcript_delay()  # the ASR's delay: a value, and a warning below
        if self.pipeline is not None:
            s = self.pipeline.stats
            lat = sorted(s.latencies_ms)
            p50 = lat[len(lat) // 2] if lat else 0.0
            p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else 0.0
            values |= {f"queue_{k}": v for k, v in self.pipeline.queue_depths().items()}
            values |= {"utterances": s.utterances, "published": s.published, "refined": s.refined,
                       "rejected_utterances": s.rejected, "dropped_utterances": s.dropped_utterances,
                       "dropped_at_deactivate": s.dropped_at_stop,
                       "frames": s.frames, "frames_dropped_old": s.frames_dropped_old,
                       "frames_thinned": s.frames_thinned,
                       "frames_dropped_future": s.frames_dropped_future, "caption_errors": s.caption_errors,
                       "caption_timeouts": s.caption_timeouts, "caption_prefetch_hits": s.caption_prefetch_hits,
                       "captions_made_from": ", ".join(f"{source} {n}" for source, n in
                                                       sorted(s.caption_frames_from.items())) or "none yet",
                       "windows_without_frames": s.windows_without_frames,
                       "frame_window_miss": s.frame_window_miss,
                       "windows_cut_short": self.pipeline.window_cut_summary(),
                       "frame_stamp_offset_s": self._frame_offset(),
                       "transcript_delay_s": delay_text,
                       "latency_p50_ms": round(p50, 1),
                       "latency_p90_ms": round(p90, 1), "last_error": s.last_error,
                       "captioner": getattr(self.pipeline.captioner, "name", "none"),
                       "camera": (", ".join(self.resolve_topic_name(t) for t in map(self._in_use, CAMERA_TOPICS) if t)
                                  or "off") if self.captions_frames() else "not subscribed: no captioner",
                       **({"captioner_check": self.captioner_check} if self.pipeline.captioner is not None else {}),
                       "conversations": len(self.pipeline.conversations),
                       "conversations_reset": s.conversations_reset,
                       "conversations_forgotten": s.conversations_forgotten, "resets_requested": s.resets_requested,
                       "time_jumps_back": s.time_jumps_back, "speaker_tokens_reused": s.speaker_tokens_reused,
                       "context_only_utterances": s.context_only, "non_speech_transcripts": s.non_speech,
                       "transcripts_unpunctuated": self.pipeline.punctuation_summary(),
                       "transcripts_not_english": self.pipeline.language_summary(),
                       "transcripts_low_confidence": self.pipeline.confidence_summary(),
                       "asr_repetition_loops": s.repetition_loops,
                       "self_echo_transcripts": self.pipeline.self_echo_summary(),
                       "self_echoes_dropped": s.self_echoes_dropped,
                       "partial_result_transcripts": self.pipeline.partial_summary(),
                       "late_transcripts": self.pipeline.late_summary(),
                       "duplicate_transcripts": self.pipeline.copy_summary(),
                       "last_output": self._last_output}
            if p90 > SLOW_LATENCY_MS and sum(ms > SLOW_LATENCY_MS for ms in lat) >= SLOW_MIN_ANSWERS:
                level, message = DiagnosticStatus.WARN, f"slow: p90 latency {p90:.0f} ms"
            elif s.frame_window_miss:
                level, message = DiagnosticStatus.WARN, "no frames in utterance windows (see frame_window_miss)"
            elif self.pipeline.windows_cut_often():
                level, message = DiagnosticStatus.WARN, "utterance windows cut short (see windows_cut_short)"
            elif self.pipeline.transcripts_copied():
                level, message = DiagnosticStatus.WARN, "transcripts come twice (see duplicate_transcripts)"
            elif self.pipeline.hears_robot():
                level, message = DiagnosticStatus.WARN, "the ASR hears the robot (see self_echo_transcripts)"
            elif self.pipeline.asr_partials():
                level, message = (DiagnosticStatus.WARN,
                                  "transcripts are partial results (see partial_result_transcripts)")
            elif self.pipeline.speech_not_english():
                level, message = DiagnosticStatus.WARN, "transcripts not in English (see transcripts_not_english)"
            elif self.pipeline.asr_unpunctuated():
                level, message = DiagnosticStatus.WARN, "transcripts without punctuation (see transcripts_unpunctuated)"
        now = time.monotonic()
        for topic, last in self._last_input.items():
            values[f"input_age_s[{topic}]"] = round(now - last, 1)
        silent = sorted(self._silence_warned)
        for topic in silent:
            values[f"silent_why[{topic}]"] = self._why_silent(topic)
        if silent and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, f"no input on {', '.join(silent)}"
        values["inputs_not_read"] = "; ".join(f"{self.resolve_topic_name(t)}: {why}"
                                              for t, why in sorted(self._mistyped.items())) or "none"
        if self._mistyped and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, "publishers of another type (see inputs_not_read)"
        if self._hri is not None and self._face_links is not None:
            values["face_expressions"] = ", ".join(self._hri.face_topics()) or "none yet"
            values["face_expressions_shared"] = "; ".join(f"{t}: {peers}"
                                                          for t, peers in sorted(self._faces_shared.items())) or "none"
        if self._faces_shared and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, "another node publishes a face's expression too " \
                "(see face_expressions_shared)"
        values["incompatible_qos"] = "; ".join(f"{t}: {peers}" for t, peers in sorted(self._qos_mismatch.items())) \
            or "none"
        if self._qos_mismatch and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, "incompatible QoS (see incompatible_qos)"
        pending = self.pending_parameters()
        if pending:
            values["parameters_pending"] = ", ".join(f"{n} (next {PARAMS_BY_NAME[n].applies})" for n in pending)
        values["utterance_msgs"] = f"{self._utterance_msgs['final']} final, {self._utterance_msgs['partial']} partial"
        no_final = self._no_final()
        if no_final:
            values["no_final_utterance"] = no_final
            if level == DiagnosticStatus.OK:
                level, message = DiagnosticStatus.WARN, "no final utterance (is_final)"
        if any(self._json.values()):
            values["json_transcripts"] = self._json_summary()
            if self._json_partials_only() and level == DiagnosticStatus.OK:
                level, message = DiagnosticStatus.WARN, "transcripts are partial results only (see json_transcripts)"
        if self.get_parameter("use_sim_time").value and self.get_clock().now().nanoseconds == 0:
            values["clock"] = "use_sim_time is true and no /clock message has come (`ros2 bag play --clock`?)"
            if level == DiagnosticStatus.OK:
                level, message = DiagnosticStatus.WARN, "no /clock (use_sim_time: true)"
        if delay is not None and not -CLOCK_SKEW_S <= delay <= LATE_MAX_S and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, "transcripts stamped on another clock (see transcript_delay_s)"
        if self.params_files_unapplied:  # e.g. its autostart: true: ahead of the "inactive" it explains
            values["params_files_unapplied"] = " | ".join(self.params_files_unapplied)
            if level == DiagnosticStatus.OK:
                level, message = DiagnosticStatus.WARN, "params file not applied (see params_files_unapplied)"
        if not self._active and level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, "inactive"
        if self.load_error:
            level, message = DiagnosticStatus.ERROR, f"configure failed: {self.load_error}"
        return DiagnosticStatus(level=level, name=diagnostic_name(self.get_fully_qualified_name()), message=message,
                                hardware_id=self.get_fully_qualified_name(),
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _json_summary(self) -> str:
        """What came on transcript as an ASR's JSON result objects: final results read, partial ones skipped."""
        n = self._json
        return (f"{n['final']} final results read from JSON (field {self._json_field!r} the latest), {n['partial']} "
                f"partial results skipped, {n['empty']} empty, {n['unread']} without a transcript field")

    def _json_partials_only(self) -> bool:
        """Whether JSON partial results have come for NO_FINAL_WARN_S and no final one: transcript is remapped onto
        the ASR's partial results, and nothing will be classified."""
        return partials_only_for(self._json, self._first_json_partial) is not None

    def _no_final(self) -> str:
        """Why nothing is classified when utterance messages have come for NO_FINAL_WARN_S and none was final
        (Utterance.is_final defaults to false); '' otherwise."""
        waited = partials_only_for(self._utterance_msgs, self._first_partial)
        if waited is None:
            return ""
        return (f"{self._utterance_msgs['partial']} utterance messages in {waited:.0f} s and none with is_final "
                "true: only final ones are classified (set is_final on the ASR's final result)")

    def _frame_offset(self) -> str:
        """The last frame's stamp minus this node's clock when it arrived, in seconds ('' before any frame):
        about 0 when the camera and the node share a clock."""
        offset = self.pipeline.frames.arrival_offset_s
        return "" if offset is None else f"{offset:+.2f}"

    def publish_diagnostics(self) -> None:
        array = DiagnosticArray(status=[self.diagnostic_status()])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


@contextlib.contextmanager
def single_cpu_thread():
    """torch on 1 CPU thread in this thread for the block, then as before (the caller's count is kept)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_threads_setup(n: int):
    """Intra-op threads for the inference worker. OpenMP keeps one thread team per calling thread, and a
    second team that has ever run (e.g. the executor thread's, from loading the model) makes libgomp
    throttle its spinning: measured on 2 cores, a predict on a worker thread took 1.25x the same predict
    on a process's only team. So every other thread of the node runs torch with 1 thread (no team) and
    only this worker gets ``n`` (0 = all cores)."""
    def setup() -> None:
        import os

        import torch

        torch.set_num_threads(n if n > 0 else (os.cpu_count() or 1))

    return setup


def check_device(device: str) -> None:
    """RuntimeError unless torch can use ``device`` here (a CUDA device asked for on a machine without one)."""
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise RuntimeError(f"device {device!r}: torch {torch.__version__} sees {count} CUDA device(s)")


def main(args: list[str] | None = None) -> int:
    """ddvlm-emotion [--ros-args --params-file config/emotion.yaml -r transcript:=/asr/text ...]"""
    args = args if args is not None else sys.argv
    rclpy.init(args=args)
    node = EmotionNode()
    node.check_params_files(args)
    # Callbacks only enqueue (the model runs on the pipeline's threads), so one executor thread is enough,
    # and rclpy's MultiThreadedExecutor costs the inference thread the GIL: bench/ros_latency.py measured
    # transcript->/emotion p50 at 2.6x a bare predict with it vs 1.2x with this one.
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def run() -> None:
        try:
            autostart = node.p("autostart")
        except ValueError as e:
            node.get_logger().error(f"{e}: not configuring by itself")
            autostart = False
        if autostart:
            node.trigger_configure()
            if node.load_error == "":
                node.trigger_activate()
        else:  # nothing else would say why a node started by hand sits still
            name = node.get_fully_qualified_name()
            node.get_logger().info(f"unconfigured (autostart: false): waiting for a lifecycle manager, or for "
                                   f"`ros2 lifecycle set {name} configure`, then `activate`; -p autostart:=true "
                                   "starts it by itself")
        executor.spin()

    def stop_pipeline() -> None:
        if node.pipeline is not None:
            node.pipeline.stop()

    return spin_until_shutdown(node, run, before_destroy=stop_pipeline)


if __name__ == "__main__":
    sys.exit(main())
