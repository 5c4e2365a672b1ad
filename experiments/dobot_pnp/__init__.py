"""The Dobot X-Trainer pick-and-place experiment: `python -m experiments.dobot_pnp` and its tools (`.serve`)."""
