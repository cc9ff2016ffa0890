"""The ROS-free core: simulation, RF synthesis, models, channel, codec, tracking, training.

Nothing under this package may import rclpy or any ROS message package (a test enforces it), so
the same code serves training, evaluation, tests and the thin nodes in ``disac_ros.nodes``.
"""
