"""ros2 launch ddvlm_ros emotion.launch.py transcript_topic:=/asr/text image_topic:=/camera/image_raw

Starts the ddvlm emotion lifecycle node with config/emotion.yaml; by default it configures and
activates itself (autostart), so no lifecycle manager is needed. Topics are remapped, not set.
``use_sim_time:=true`` when the inputs come from ``ros2 bag play --clock``.
``respawn:=true`` starts the node again when its process dies (after ``respawn_delay`` seconds), and with
autostart it configures and activates itself again.
A topic argument set to '' turns that input off (``compressed_image_topic`` is off unless given).
The default topics are relative: ``namespace:=robot1`` puts them under it (/robot1/transcript,
/robot1/camera/image_raw, /robot1/emotion: one node per robot, side by side); a topic given with a leading '/'
is taken as it is. ROS4HRI's /humans/... topics and /diagnostics stay where REP-155 and ROS put them.
Every other node parameter is also a launch argument (``quantized:=true cpu_threads:=4 ...``): one that
is not given keeps the params file's value (``ros2 launch ddvlm_ros emotion.launch.py --show-args``).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from ddvlm_ros.params import RESPAWN_DELAY_S, launch_arguments, launch_overrides, launch_respawn, launch_topics

TOPIC_ARGUMENTS = [  # (remapped name, launch argument, default, description); defaults relative: in `namespace`
    ("transcript", "transcript_topic", "transcript", "std_msgs/String ASR transcripts ('speaker: text')"),
    ("utterance", "utterance_topic", "utterance", "ddvlm_msgs/Utterance transcripts with speaker and timing"),
    ("transcription", "whisper_topic", "whisper/transcription", "whisper_msgs/Transcription from whisper_ros (read "
     "where whisper_msgs is installed)"),
    ("voice_activity", "voice_activity_topic", "voice_activity", "std_msgs/Bool of a voice activity detector, e.g. "
     "respeaker_ros' is_speeching (read only with a captioner): places transcripts' camera windows"),
    ("robot_speaking", "robot_speaking_topic", "robot_speaking", "std_msgs/Bool: whether the robot is speaking now "
     "(/robot_speaking, as a speech stack publishes it for asr_vosk; read only with a captioner): what a VAD hears "
     "meanwhile is the robot"),
    ("image", "image_topic", "camera/image_raw", "sensor_msgs/Image (subscribed only with a captioner)"),
    ("image/compressed", "compressed_image_topic", "", "sensor_msgs/CompressedImage (subscribed only with a "
     "captioner); '' = off (a camera that publishes through image_transport JPEG-encodes every frame while its "
     "compressed topic has a subscriber)"),
    ("robot_speech", "robot_speech_topic", "robot_speech", "std_msgs/String: what the robot says (the text it sends "
     "its TTS): context for the next human turn, no /emotion"),
    ("emotion", "emotion_topic", "emotion", "ddvlm_msgs/EmotionDistribution output"),
]


def emotion_node(context):
    """The node, with the params file and then the launch arguments that were given (typed, checked)."""
    given = launch_overrides({a["name"]: LaunchConfiguration(a["name"]).perform(context) for a in launch_arguments()})
    topics = {arg: LaunchConfiguration(arg).perform(context) for _, arg, _, _ in TOPIC_ARGUMENTS}
    remappings, topics_off = launch_topics(TOPIC_ARGUMENTS, topics)  # '' = that input off, not an empty remap
    given |= topics_off
    sim_time = LaunchConfiguration("use_sim_time").perform(context)
    if sim_time:  # rclpy's own parameter: /clock (e.g. `ros2 bag play --clock`) instead of the wall clock
        given["use_sim_time"] = sim_time == "true"
    respawn, respawn_delay = launch_respawn(LaunchConfiguration("respawn").perform(context),
                                            LaunchConfiguration("respawn_delay").perform(context))
    return [LifecycleNode(
        package="ddvlm_ros",
        executable="emotion_node",
        name="ddvlm_emotion",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        parameters=[LaunchConfiguration("params_file"), given],
        remappings=remappings,
        respawn=respawn,  # a process that died is started again; autostart configures and activates it
        respawn_delay=respawn_delay,
    )]


def generate_launch_description():
    share = get_package_share_directory("ddvlm_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "emotion.yaml"),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and of its default topics (robot1: "
                                          "/robot1/transcript ... /robot1/emotion)"),
        DeclareLaunchArgument("log_level", default_value="info", choices=["debug", "info", "warn", "error", "fatal"],
                              description="the node's log level"),
        DeclareLaunchArgument("use_sim_time", default_value="", choices=["", "true", "false"],
                              description="true: the node's clock is /clock (replaying a bag with `ros2 bag "
                                          "play --clock`) [node default false; '' = the params file's value]"),
        DeclareLaunchArgument("respawn", default_value="false", choices=["true", "false"],
                              description="true: start the node again when its process dies (with autostart it "
                                          "configures and activates itself again)"),
        DeclareLaunchArgument("respawn_delay", default_value=str(RESPAWN_DELAY_S),
                              description="seconds to wait before such a restart"),
    ]
    args += [DeclareLaunchArgument(arg, default_value=default, description=description)
             for _, arg, default, description in TOPIC_ARGUMENTS]
    args += [DeclareLaunchArgument(**a) for a in launch_arguments()]
    return LaunchDescription(args + [OpaqueFunction(function=emotion_node)])
