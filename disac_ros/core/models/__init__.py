"""Neural models of LLM-DiSAC (ROS-free): RVFN, semantic codec, channel, decoders, TRAM.

Submodules are imported on demand (``from disac_ros.core.models.tram import TRAM``) so that a
light consumer, e.g. the packet codec, does not pay for transformers/peft imports.
"""
