#!/usr/bin/env bash
# The actor machine: the policy on its GPU, the robot env the X-Trainer's robot PC connects to
# (ws://<this machine>:8080 by default), episodes to the learner. Extra arguments are config overrides, e.g.
#   scripts/start_actor.sh --config.transport.host=10.0.0.2 --config.transport.auth_key=KEY \
#       --config.env.host=0.0.0.0 --config.env.api_key=ROBOTKEY
# Label keys on this terminal: s + Enter = success, f + Enter = failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m experiments.dobot_pnp --config="configs/dobot_pnp.py:${VARIANT:-hiors}" --config.role=actor "$@"
