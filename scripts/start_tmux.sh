#!/usr/bin/env bash
# Learner and actor in one tmux session (window 0: learner, window 1: actor), on this machine or, with
# LEARNER_SSH=user@host, the learner started over ssh in its own window. Extra arguments go to both.
#   scripts/start_tmux.sh --config.transport.auth_key=KEY            # tmux attach -t hiors
set -euo pipefail
cd "$(dirname "$0")/.."
SESSION="${SESSION:-hiors}"
ARGS=$(printf ' %q' "$@")
if tmux has-session -t "$SESSION" 2>/dev/null; then
  echo "tmux session $SESSION exists: tmux attach -t $SESSION (or SESSION=other $0 ...)" >&2
  exit 1
fi
if [ -n "${LEARNER_SSH:-}" ]; then
  LEARNER_CMD="ssh -t $LEARNER_SSH 'cd $(printf %q "${LEARNER_DIR:-$PWD}") && scripts/start_learner.sh$ARGS'"
else
  LEARNER_CMD="scripts/start_learner.sh$ARGS"
fi
tmux new-session -d -s "$SESSION" -n learner "$LEARNER_CMD; read -p 'learner exited; Enter to close'"
tmux new-window -t "$SESSION" -n actor "sleep ${ACTOR_DELAY_S:-20}; scripts/start_actor.sh$ARGS; read -p 'actor exited; Enter to close'"
echo "started tmux session $SESSION: tmux attach -t $SESSION"
