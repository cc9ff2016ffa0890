#!/usr/bin/env bash
# The test command: set up (fast when already done), then run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k rf -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. scripts/env.sh
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}
exec python -m pytest "$@"
