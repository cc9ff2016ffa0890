"""disac_ros: LLM-driven distributed integrated sensing and semantic communication for ROS 2."""

__version__ = '0.1.0'
