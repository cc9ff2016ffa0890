#!/usr/bin/env bash
# Make a small sample bag from our own simulator: runs the world through the fallback runner and
# records every device topic, ground truth and tf into rosbag2 MCAP, then prints its summary.
#
#   scripts/make_sample_bag.sh [OUT]            (default OUT: bags/sample; must not exist)
#
# Environment knobs (defaults give ~7 MB: 2 devices x 2 Hz x 10 s; each device-step is a 49 KB
# image + a 131 KB RF cube): DURATION_S=10 NUM_DEVICES=2 RATE_HZ=2 SEED=0.
# Replay it with:  disac_fleet --source bag --bag OUT     (or: disac-bag play OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bags/sample}
DURATION_S=${DURATION_S:-10}
NUM_DEVICES=${NUM_DEVICES:-2}
RATE_HZ=${RATE_HZ:-2}
SEED=${SEED:-0}
if [ -e "$OUT" ]; then
  echo "make_sample_bag: $OUT already exists; remove it or pass another folder" >&2
  exit 2
fi
mkdir -p "$(dirname "$OUT")"
# colcon's setup scripts read unset variables: source them with nounset off.
set +u
# shellcheck disable=SC1091
. scripts/env.sh
set -u
# Our own source tree first, so the script works before/without a colcon rebuild.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# A private DDS domain on localhost, so nothing else's traffic ends up in the bag.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 101))} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

python -m disac_ros.tools.fleet --num-devices "$NUM_DEVICES" -p "world.rate_hz=$RATE_HZ" \
  -p "world.seed=$SEED" --log-level warn &
fleet=$!
trap 'kill -INT $fleet 2>/dev/null || true; wait $fleet 2>/dev/null || true' EXIT

# The recorder waits for the world's topics (Genesis builds its scene first: ~5 s, ~80 s the
# first time on a machine) and stops DURATION_S after the first message.
python -m disac_ros.nodes.bag_recorder --ros-args -p "output:=$OUT" -p storage:=mcap \
  -p "max_duration_s:=$DURATION_S" \
  -p 'topics:=["re:/dev[0-9]+/camera/image_raw", "re:/dev[0-9]+/camera/camera_info", "re:/dev[0-9]+/rf/frame", /world/ground_truth, /tf, /tf_static]'

kill -INT "$fleet"
wait "$fleet"
trap - EXIT
python -m disac_ros.tools.bag info "$OUT"
du -sh "$OUT"
