"""Run one Hi-ORS update on a mesh of the given shape and save state + metrics (used by test_mesh.py).

XLA_FLAGS=--xla_force_host_platform_device_count=8 python mesh_equivalence.py DATA FSDP OUT.npz
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "agents"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from agent_helpers import random_batch, tiny_model, tiny_params  # noqa: E402

from hiors_jax.agents import hiors  # noqa: E402
from hiors_jax.agents.train_state import OptimizerConfig  # noqa: E402
from hiors_jax.models import weights  # noqa: E402
from hiors_jax.train import learner as learner_lib  # noqa: E402
from hiors_jax.train import mesh as mesh_lib  # noqa: E402


def main(data: int, fsdp: int, out: str) -> None:
    model = tiny_model()
    # Some leaves (attention key biases) have an exactly-zero true gradient; Adam with eps=1e-8 turns their
    # rounding noise (~1e-10, reduction-order dependent) into full +-lr steps. A larger eps keeps that noise
    # at noise level, so the comparison measures the sharded computation, not Adam's sign of zero.
    opt = OptimizerConfig(peak_lr=1e-4, schedule="constant", eps=1e-4)
    agent = hiors.make_agent(model, hiors.FlowConfig(optimizer=opt, ema_decay=0.9))
    mesh = mesh_lib.make_mesh(data, fsdp, jax.devices()[: data * fsdp])
    state = agent.init({"actor": tiny_params(model)}, jax.random.PRNGKey(0))
    # The PI0 network follows the model's logical-axis rules (the tiny model's leaves are all below the default
    # shard size, so that threshold is lowered to make FSDP actually split them).
    rules = learner_lib.model_param_rules(min_shard_bytes=0)
    sharded = mesh_lib.ShardedUpdate(agent, mesh, jax.eval_shape(lambda: state), rules)
    state = sharded.place(state)
    leaves = jax.tree.leaves(state.params["actor"])
    sharded_leaves = sum(1 for x in leaves if not x.sharding.is_fully_replicated)
    infos = []
    for seed in range(2):
        state, info = sharded.step(state, sharded.shard_batch(random_batch(model, batch=8, seed=seed)))
        infos.append(jax.device_get(info))
    flat = {f"params/{k}": np.asarray(v) for k, v in weights.flatten_params(jax.device_get(state.params)).items()}
    flat.update(
        {f"ema/{k}": np.asarray(v) for k, v in weights.flatten_params(jax.device_get(state.ema_params)).items()}
    )
    for i, info in enumerate(infos):
        flat.update({f"info{i}/{k}": np.asarray(v) for k, v in info.items()})
    flat["sharded_leaves"] = np.asarray(sharded_leaves)
    np.savez(out, **flat)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
