"""Evaluation of LLM-DiSAC against its baselines (ROS-free): metrics, baselines, sweeps, report."""
