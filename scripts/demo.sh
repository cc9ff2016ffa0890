#!/usr/bin/env bash
# The demo: the whole fleet on the built-in simulator with the shipped model.
#
#   bash scripts/demo.sh [--duration S] [--scenario FILE] [--num-devices K] [--model DIR]
#                        [--renderer genesis|none] [-p NODE.NAME=VALUE ...]
#                        [--separate-device-processes] [--no-setup]
#
# --scenario FILE simulates that scenario with its own device ids (default: the world's
# config/scenarios/default.yaml, devices dev0..dev3); K defaults to the scenario's device count.
#
# 1. runs scripts/setup.sh (skipped with --no-setup; it is fast when nothing changed);
# 2. starts the fleet (world + K device nodes + link + aggregator) with the fallback runner and
#    an MCAP recorder (tracks, markers, weights, ground truth, tf, camera images) under out/demo/;
#    the K simulated device nodes share one process (disac_fleet --share-device-process: one
#    torch start-up instead of K on this small machine) unless --separate-device-processes;
# 3. prints a live one-line status (devices up, tracks, latency) until --duration S (default 60)
#    after the first tracks (waiting up to 10 min for them: a first start compiles kernels) or Ctrl-C;
# 4. stops everything and prints the tracking score (disac-score-tracks) as JSON.
#
# Open out/demo/bag/*.mcap in Foxglove: /aggregator/markers (3D panel, frame "world"),
# /aggregator/tracks, /world/ground_truth, /<dev>/camera/image_raw.
set -euo pipefail
CALLER_DIR=$(pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=60
NUM_DEVICES=                     # empty: the scenario's device count (4 for the default)
SCENARIO=
MODEL=${DISAC_MODEL_DIR:-$ROOT/models/default}
RENDERER=genesis
SETUP=1
PARAMS=()
FLEET_OPTS=(--share-device-process)
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --num-devices) NUM_DEVICES=$2; shift 2 ;;
    --scenario) SCENARIO=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --renderer) RENDERER=$2; shift 2 ;;
    -p|--param) PARAMS+=(-p "$2"); shift 2 ;;   # forwarded to disac_fleet, e.g. aggregator.nms_radius_m=2
    --separate-device-processes) FLEET_OPTS=(); shift ;;
    --no-setup) SETUP=0; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# A relative --scenario is the caller's (or else the repo's) path; the fleet gets it absolute.
if [ -n "$SCENARIO" ] && [ "${SCENARIO#/}" = "$SCENARIO" ] && [ -f "$CALLER_DIR/$SCENARIO" ]; then
  SCENARIO=$CALLER_DIR/$SCENARIO
fi

log() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

if [ "$SETUP" = 1 ]; then
  bash scripts/setup.sh
fi
# shellcheck disable=SC1091
. scripts/env.sh
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -f "$MODEL/model.json" ]; then
  echo "demo.sh: no trained model in $MODEL (model.json missing)." >&2
  echo "  Train one: disac-train all --data data/splits/train --val data/splits/val --out $MODEL" >&2
  echo "  or point --model / \$DISAC_MODEL_DIR at a model folder." >&2
  exit 2
fi
MODEL=$(cd "$MODEL" && pwd)
OUT=$ROOT/out/demo
mkdir -p "$OUT"
rm -rf "$OUT/bag"
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}

# The fleet's own device ids (the scenario's, or fleet.yaml's dev0..devK-1), for the recorder's
# camera topics and the status line; a bad --scenario / --num-devices stops the demo here.
DEVICE_OPTS=(--config config/fleet.yaml)
if [ -n "$SCENARIO" ]; then DEVICE_OPTS+=(--scenario "$SCENARIO"); fi
if [ -n "$NUM_DEVICES" ]; then DEVICE_OPTS+=(--num-devices "$NUM_DEVICES"); fi
if ! DEVICE_LIST=$(python -m disac_ros.tools.fleet "${DEVICE_OPTS[@]}" --list-devices); then
  exit 2
fi
mapfile -t DEVICES <<< "$DEVICE_LIST"
TOPICS="/aggregator/tracks,/aggregator/markers,/aggregator/weights,/world/ground_truth,/tf,/tf_static"
for d in "${DEVICES[@]}"; do TOPICS="$TOPICS,/$d/camera/image_raw"; done

log "model $MODEL, ${#DEVICES[@]} devices (${DEVICES[*]})${SCENARIO:+, scenario $SCENARIO}, renderer $RENDERER, ROS_DOMAIN_ID=$ROS_DOMAIN_ID; logs in $OUT"
python -m disac_ros.tools.fleet "${DEVICE_OPTS[@]}" "${FLEET_OPTS[@]}" \
  -p "model_dir=$MODEL" -p "world.renderer=$RENDERER" "${PARAMS[@]}" > "$OUT/fleet.log" 2>&1 &
FLEET=$!
python -m disac_ros.nodes.bag_recorder --ros-args -p "output:=$OUT/bag" \
  -p "topics:=[$(echo "$TOPICS" | sed "s/\([^,]*\)/'\1'/g")]" > "$OUT/recorder.log" 2>&1 &
RECORDER=$!

stop_all() {
  log "stopping the fleet and the recorder"
  kill -INT "$FLEET" "$RECORDER" 2>/dev/null || true
  wait "$FLEET" 2>/dev/null || true
  wait "$RECORDER" 2>/dev/null || true
}
# Ctrl-C ends the live status early; the demo then stops everything and still prints the score.
trap 'log "interrupted"' INT TERM

log "running for $DURATION s from the first tracks (Ctrl-C to stop early); a first start compiles Genesis kernels (minutes)"
python -m disac_ros.tools.fleet_status --duration "$DURATION" --wait 600 --devices "${DEVICES[@]}" || true
stop_all

log "recorded $(du -sh "$OUT/bag" 2>/dev/null | cut -f1) in $OUT/bag (open the .mcap in Foxglove)"
log "tracking score (disac-score-tracks --bag $OUT/bag):"
python -m disac_ros.tools.score_tracks --bag "$OUT/bag" | tee "$OUT/score.json"
