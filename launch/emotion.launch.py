"""ros2 launch ddvlm_ros emotion.launch.py transcript_topic:=/asr/text image_topic:=/camera/image_raw

Starts the ddvlm emotion lifecycle node with config/emotion.yaml; by default it configures and
activates itself (autostart), so no lifecycle manager is needed. Topics are remapped, not set.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description():
    share = get_package_share_directory("ddvlm_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "emotion.yaml"),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("transcript_topic", default_value="/transcript",
                              description="std_msgs/String ASR transcripts ('speaker: text')"),
        DeclareLaunchArgument("utterance_topic", default_value="/utterance",
                              description="ddvlm_msgs/Utterance transcripts with speaker and timing"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="sensor_msgs/Image"),
        DeclareLaunchArgument("compressed_image_topic", default_value="/camera/image_raw/compressed",
                              description="sensor_msgs/CompressedImage"),
        DeclareLaunchArgument("emotion_topic", default_value="/emotion",
                              description="ddvlm_msgs/EmotionDistribution output"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate on start"),
        DeclareLaunchArgument("captioner", default_value="none", choices=["none", "cue", "qwen"],
                              description="visual captioner"),
        DeclareLaunchArgument("device", default_value="cpu", description="torch device"),
    ]
    node = LifecycleNode(
        package="ddvlm_ros",
        executable="emotion_node",
        name="ddvlm_emotion",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"),
                    {"autostart": LaunchConfiguration("autostart"),
                     "captioner": LaunchConfiguration("captioner"),
                     "device": LaunchConfiguration("device")}],
        remappings=[
            ("transcript", LaunchConfiguration("transcript_topic")),
            ("utterance", LaunchConfiguration("utterance_topic")),
            ("image", LaunchConfiguration("image_topic")),
            ("image/compressed", LaunchConfiguration("compressed_image_topic")),
            ("emotion", LaunchConfiguration("emotion_topic")),
        ],
    )
    return LaunchDescription(args + [node])
