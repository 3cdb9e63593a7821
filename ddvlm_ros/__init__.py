"""ddvlm_ros: thin rclpy (lifecycle) nodes around ddvlm_core. The emotion node lands with issue 6."""
