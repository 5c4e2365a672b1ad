#!/usr/bin/env bash
# The learner machine: replay, updates, params to actors. Extra arguments are config overrides, e.g.
#   scripts/start_learner.sh --config.transport.auth_key=KEY --config.model.init=openpi:/ckpt/pi0_base/params
# VARIANT (default hiors) picks configs/dobot_pnp.py:<variant>; the learner listens on transport.port (5488)
# and transport.broadcast_port (5489) on all interfaces when transport.host is not local.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m experiments.dobot_pnp --config="configs/dobot_pnp.py:${VARIANT:-hiors}" --config.role=learner \
  --config.transport.host="${LEARNER_HOST:-0.0.0.0}" "$@"
