"""SFT / behaviour cloning: plain flow matching on demonstrations (the BC baseline).

The same loss as Hi-ORS with every sample weighted equally (`batch.weight` ignored): the demos are all
accepted by construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hiors_jax.agents.base import Agent
from hiors_jax.agents.hiors import FlowConfig
from hiors_jax.agents.hiors import make_agent as make_flow_agent
from hiors_jax.models.config import Pi0Config


def make_agent(model: Pi0Config, cfg: FlowConfig | None = None, trainable: Any = True) -> Agent:
    cfg = dataclasses.replace(cfg or FlowConfig(), use_weights=False)
    return make_flow_agent(model, cfg, trainable, algorithm="sft")
