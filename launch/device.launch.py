"""Launch ONE sensing device on a robot (vehicle or roadside unit): the device_node only.

    ros2 launch disac_ros device.launch.py device_id:=veh7 [namespace:=veh7]
        [camera_topic:=camera/image_raw] [camera_info_topic:=camera/camera_info]
        [rf_topic:=rf/frame] [model_dir:=DIR]
        [model_device_id:=dev0] [threads:=1] [static_pose:='x y z yaw'] [shared_secret:=hex:...]
        [params_file:=FILE] [use_sim_time:=false] [log_level:=info]

The camera and RF drivers run on the robot as usual; remap their topics with camera_topic /
rf_topic (relative to the namespace). With the camera's CameraInfo (camera_info_topic) and the
waveform in each RfFrame, the device resamples both to the sensors the model was trained with,
so any camera resolution, field of view and chirp count works. The device publishes ``/<namespace>/semantic/feature``;
the aggregator (fleet.launch.py, or aggregator_node on the roadside unit) must list device_id.
A device id the model was not trained for uses ``model_device_id``'s weights.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = (
    ('device_id', 'dev0', 'device id (accepted by the aggregator)'),
    ('namespace', '', 'namespace of the device; empty = /<device_id>'),
    ('camera_topic', 'camera/image_raw', 'sensor_msgs/Image input (relative to the namespace)'),
    ('camera_info_topic', 'camera/camera_info', 'sensor_msgs/CameraInfo of the camera; empty = none'),
    ('rf_topic', 'rf/frame', 'disac_interfaces/RfFrame input'),
    ('model_dir', '', 'trained model folder; empty = $DISAC_MODEL_DIR or the installed models/default'),
    ('model_device_id', '', "use this device's weights (empty = device_id)"),
    ('threads', '1', 'torch CPU threads'),
    ('static_pose', '', "'x y z yaw' fixed pose (no /tf); empty = from /tf"),
    ('shared_secret', '', "'hex:...' fleet secret to sign features; empty = unsigned"),
    ('params_file', '', 'extra ROS 2 parameters file for the node'),
    ('use_sim_time', 'false', 'use /clock'),
    ('log_level', 'info', 'ROS log level'),
)


def device_parameters(context) -> dict:
    """Launch arguments -> the node's parameters."""
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()
    threads, sim_time = arg('threads'), arg('use_sim_time').lower()
    if not (threads.isdigit() and int(threads) >= 1):
        raise ValueError(f'threads: expected a whole number >= 1, got {threads!r}')
    if sim_time not in ('true', 'false'):
        raise ValueError(f'use_sim_time: expected true or false, got {arg("use_sim_time")!r}')
    return {'device_id': arg('device_id'), 'camera_topic': arg('camera_topic'),
            'camera_info_topic': arg('camera_info_topic'), 'rf_topic': arg('rf_topic'),
            'model_dir': arg('model_dir'), 'model_device_id': arg('model_device_id'),
            'threads': int(threads), 'static_pose': arg('static_pose'),
            'shared_secret': arg('shared_secret'), 'use_sim_time': sim_time == 'true'}


def _launch_device(context, *args, **kwargs):
    params = device_parameters(context)
    namespace = LaunchConfiguration('namespace').perform(context).strip() or '/' + params['device_id']
    extra = LaunchConfiguration('params_file').perform(context).strip()
    return [Node(package='disac_ros', executable='device_node', name='device_node', namespace=namespace,
                 parameters=[params] + ([extra] if extra else []),
                 arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level').perform(context)],
                 output='screen')]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments; the node is built at launch time."""
    return LaunchDescription([DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]
                             + [OpaqueFunction(function=_launch_device)])
