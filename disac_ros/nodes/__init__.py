"""Thin rclpy adapters around ``disac_ros.core``: parameters, messages, QoS, timers, diagnostics."""
