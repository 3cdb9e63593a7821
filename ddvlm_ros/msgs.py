"""ddvlm_msgs' types for the nodes, or an error that says how to build them where the package is missing."""
NOT_BUILT = ("No module named 'ddvlm_msgs': ddvlm's message package is not built, or its workspace is not sourced. "
             "colcon does not look for it inside ddvlm_ros's folder (msg/): in the workspace's src, "
             "`ln -s ddvlm/msg ddvlm_msgs`, then `colcon build` and `source install/setup.bash` (README, \"On a "
             "robot\"); in this repository without ROS 2 from apt, `make` builds it into the venv")

try:
    from ddvlm_msgs.msg import EmotionDistribution, Utterance
    from ddvlm_msgs.srv import ResetConversation
except ModuleNotFoundError as e:
    if e.name != "ddvlm_msgs":
        raise
    raise ModuleNotFoundError(NOT_BUILT, name="ddvlm_msgs") from None

__all__ = ["EmotionDistribution", "Utterance", "ResetConversation"]
