"""The aggregator's tracks as vision_msgs (what ROS perception tools consume), when installed.

``vision_msgs/Detection3DArray`` on ``<detections_topic>`` (one Detection3D per confirmed track:
``id`` = the persistent track id, one hypothesis per class with its probability and the track's
pose with covariance; the box size is 0 because the model does not estimate it) and a latched
``vision_msgs/LabelInfo`` on ``<detections_topic>/label_info`` mapping class ids to names.
vision_msgs comes from ROS apt (``ros-<distro>-vision-msgs``) or a colcon build of its sources;
without it this output is off and the node says so once.
"""
from __future__ import annotations

from rclpy.node import Node

from disac_interfaces.msg import TrackedObjectArray
from disac_ros.core.types import CLASS_NAMES
from disac_ros.nodes.qos import latched_qos, reliable_qos


class VisionOutput:
    """Publishes TrackedObjectArray contents as Detection3DArray (+ LabelInfo once, latched)."""

    def __init__(self, node: Node, topic: str, frame_id: str) -> None:
        self.topic = topic
        self.enabled = False
        self._pub = None
        if not topic:
            return
        try:
            from vision_msgs.msg import (Detection3D, Detection3DArray, LabelInfo, ObjectHypothesisWithPose,
                                         VisionClass)
        except ImportError:
            node.get_logger().info(f'vision_msgs is not installed: no {topic} output '
                                   '(install ros-<distro>-vision-msgs to get Detection3DArray)')
            return
        self._Detection3D, self._Detection3DArray = Detection3D, Detection3DArray
        self._Hypothesis = ObjectHypothesisWithPose
        self._pub = node.create_publisher(Detection3DArray, topic, reliable_qos(10))
        label_pub = node.create_publisher(LabelInfo, topic.rstrip('/') + '/label_info', latched_qos(1))
        info = LabelInfo()
        info.header.frame_id = frame_id
        info.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(CLASS_NAMES)]
        label_pub.publish(info)
        self._label_pub = label_pub     # keep it alive: late joiners get the latched map
        self.topic = self._pub.topic_name
        self.enabled = True

    def publish(self, tracks: TrackedObjectArray) -> None:
        """Publish ``tracks`` (same header) as a Detection3DArray; no-op when disabled."""
        if self._pub is None:
            return
        out = self._Detection3DArray()
        out.header = tracks.header
        for obj in tracks.objects:
            det = self._Detection3D()
            det.header = tracks.header
            det.id = str(obj.id)
            probs = list(obj.class_probabilities) or [0.0] * len(CLASS_NAMES)
            if not obj.class_probabilities and obj.classification < len(probs):
                probs[obj.classification] = float(obj.class_confidence)
            ranked = sorted(range(len(probs)), key=lambda k: -probs[k])
            for k in ranked:
                if k == 0 or probs[k] <= 0.0:
                    continue              # class 0 is 'unknown': not a hypothesis
                h = self._Hypothesis()
                h.hypothesis.class_id = str(k)
                h.hypothesis.score = float(probs[k])
                h.pose = obj.pose
                det.results.append(h)
            det.bbox.center = obj.pose.pose
            det.bbox.size = obj.dimensions
            out.detections.append(det)
        self._pub.publish(out)
