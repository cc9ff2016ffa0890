# Source this file (". scripts/env.sh") to use the workspace built by scripts/setup.sh.
_disac_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# colcon's and venv's activation scripts read unset variables: relax `set -u` while sourcing them.
case $- in *u*) _disac_nounset=1; set +u ;; *) _disac_nounset= ;; esac
# shellcheck disable=SC1091
. "$_disac_root/.venv/bin/activate"
# shellcheck disable=SC1091
. "$_disac_root/install/setup.bash"
[ -n "$_disac_nounset" ] && set -u
unset _disac_nounset
export AMENT_PREFIX_PATH="$_disac_root/install/disac_ros:$_disac_root/install/disac_interfaces:$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# The console scripts (disac_fleet, disac-dataset, disac-train, ...) live where ament_python puts
# them, which `ros2 run` finds but a shell does not: put them on PATH too.
case ":$PATH:" in *":$_disac_root/install/disac_ros/lib/disac_ros:"*) ;;
  *) export PATH="$_disac_root/install/disac_ros/lib/disac_ros:$PATH" ;; esac
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# Keep DDS discovery on this host unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
# A 16 MB shared-memory segment so camera frames do not fall back to fragmented UDP.
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_disac_root/config/fastdds_shm.xml}
# Never reach for a model hub: all weights come from installed packages or our own checkpoints.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset _disac_root
