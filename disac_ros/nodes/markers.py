"""TrackedObjectArray -> visualization_msgs/MarkerArray for RViz and Foxglove.

Per track: a CUBE sized by the class's typical box, coloured by class (alpha by existence
probability), an ARROW for the velocity, and a TEXT label "<class> #<id>". The array starts with
one DELETEALL marker so tracks that ended disappear; every marker has a short lifetime too, so a
stalled aggregator does not leave stale boxes behind.
"""
from __future__ import annotations

from builtin_interfaces.msg import Duration as DurationMsg
from disac_interfaces.msg import TrackedObjectArray
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from disac_ros.core.types import CLASS_NAMES

# RGB per class index (unknown, car, truck, pedestrian, cyclist).
CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.6, 0.6, 0.6), (0.1, 0.5, 1.0), (1.0, 0.55, 0.0), (0.1, 0.85, 0.2), (0.9, 0.1, 0.8))
# Box (length, width, height) per class when the track carries no dimensions.
CLASS_SIZES: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0), (4.5, 1.9, 1.5), (8.0, 2.5, 3.2), (0.6, 0.6, 1.8), (1.8, 0.6, 1.7))


def tracks_to_markers(msg: TrackedObjectArray, namespace: str = 'tracks',
                      lifetime_s: float = 1.0) -> MarkerArray:
    """Markers for every object of ``msg`` in its header frame."""
    out = MarkerArray()
    clear = Marker()
    clear.header = msg.header
    clear.ns = namespace
    clear.action = Marker.DELETEALL
    out.markers.append(clear)
    life = DurationMsg(sec=int(lifetime_s), nanosec=int((lifetime_s % 1.0) * 1e9))
    for obj in msg.objects:
        cls = int(obj.classification) if int(obj.classification) < len(CLASS_NAMES) else 0
        r, g, b = CLASS_COLORS[cls]
        size = (obj.dimensions.x, obj.dimensions.y, obj.dimensions.z)
        if min(size) <= 0:
            size = CLASS_SIZES[cls]
        alpha = 0.3 + 0.6 * max(0.0, min(1.0, float(obj.existence_probability)))
        box = Marker()
        box.header = msg.header
        box.ns = namespace
        box.id = int(obj.id % (1 << 31)) * 3
        box.type = Marker.CUBE
        box.action = Marker.ADD
        box.pose = obj.pose.pose
        box.pose.position.z = size[2] / 2.0
        box.scale.x, box.scale.y, box.scale.z = (float(s) for s in size)
        box.color = ColorRGBA(r=r, g=g, b=b, a=alpha)
        box.lifetime = life
        arrow = Marker()
        arrow.header = msg.header
        arrow.ns = namespace
        arrow.id = box.id + 1
        arrow.type = Marker.ARROW
        arrow.action = Marker.ADD
        p = obj.pose.pose.position
        v = obj.twist.twist.linear
        z = size[2] + 0.2
        arrow.points = [Point(x=p.x, y=p.y, z=z), Point(x=p.x + v.x, y=p.y + v.y, z=z)]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.15, 0.3, 0.3
        arrow.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        arrow.lifetime = life
        text = Marker()
        text.header = msg.header
        text.ns = namespace
        text.id = box.id + 2
        text.type = Marker.TEXT_VIEW_FACING
        text.action = Marker.ADD
        text.pose.position.x, text.pose.position.y, text.pose.position.z = p.x, p.y, z + 0.8
        text.pose.orientation.w = 1.0
        text.scale.z = 0.8
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        text.text = f'{CLASS_NAMES[cls]} #{obj.id}'
        text.lifetime = life
        out.markers.extend([box, arrow, text])
    return out
