"""Which parameters train: boolean mask trees for the learner's optimizer (e.g. `optax.masked`, or zeroed updates).

    python -m hiors_jax.models.trainable --preset pi0_lora     # trainable-parameter count per filter (shapes only)

Filters (`which`):
- "all": every parameter (full fine-tuning).
- "lora": only the LoRA factors (`lora_a`, `lora_b`, `*_lora_a`, `*_lora_b`); everything else frozen.
- "openpi_lora": openpi's `Pi0Config.get_freeze_filter()` for LoRA variants: the language-model leaves of every
  expert that has LoRA are frozen except their LoRA factors; SigLIP, the projections and a LoRA-less expert train.
- "action_expert": the action expert (`*_1` leaves of the transformer) and the action/state/time projections.
- "no_vision": everything but the SigLIP tower and its projector (`PaliGemma/img`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

import jax
import numpy as np

from hiors_jax.models.config import Pi0Config

FILTERS = ("all", "lora", "openpi_lora", "action_expert", "no_vision")

_PROJECTIONS = ("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out")
_PROJECTIONS += ("time_mlp_in", "time_mlp_out")


def is_lora_path(path: str) -> bool:
    leaf = path.rsplit("/", 1)[-1]
    return leaf in ("lora_a", "lora_b") or leaf.endswith(("_lora_a", "_lora_b"))


def _expert_index(path: str) -> int | None:
    """Which transformer expert a `PaliGemma/llm/...` leaf belongs to (None outside the transformer)."""
    parts = path.split("/")
    if parts[:2] != ["PaliGemma", "llm"]:
        return None
    if parts[2] == "embedder":
        return 0
    module = parts[4] if parts[2] == "layers" and parts[3] == "attn" else parts[3] if parts[2] == "layers" else parts[2]
    head, _, tail = module.rpartition("_")
    return int(tail) if head and tail.isdigit() else 0


def _predicate(config: Pi0Config, which: str) -> Callable[[str], bool]:
    if which == "all":
        return lambda path: True
    if which == "lora":
        return is_lora_path
    if which == "openpi_lora":
        has_lora = [cfg.lora_attn is not None or cfg.lora_ffn is not None for cfg in (config.vlm, config.expert)]

        def openpi(path):
            expert = _expert_index(path)
            return expert is None or not has_lora[expert] or is_lora_path(path)

        return openpi
    if which == "action_expert":
        return lambda path: path.split("/")[0] in _PROJECTIONS or _expert_index(path) == 1
    if which == "no_vision":
        return lambda path: not path.startswith("PaliGemma/img/")
    raise ValueError(f"unknown trainable filter which={which!r}; choose one of {FILTERS}")


def trainable_mask(config: Pi0Config, params: Mapping, which: str) -> dict:
    """Tree of bools shaped like `params` (dicts of arrays or ShapeDtypeStructs): True where the leaf trains."""
    keep = _predicate(config, which)

    def visit(node, prefix):
        return {
            key: visit(value, f"{prefix}{key}/") if isinstance(value, Mapping) else keep(f"{prefix}{key}")
            for key, value in node.items()
        }

    mask = visit(params, "")
    if not any(jax.tree.leaves(mask)):
        hint = (
            " (this model has no LoRA leaves: use a *_lora preset or GemmaConfig.with_lora)" if "lora" in which else ""
        )
        raise ValueError(f"trainable filter which={which!r} selects no parameter{hint}")
    return mask


def trainable_count(config: Pi0Config, params: Mapping, which: str) -> int:
    mask = trainable_mask(config, params, which)
    sizes = jax.tree.map(lambda leaf, m: int(np.prod(leaf.shape, dtype=np.int64)) if m else 0, params, mask)
    return int(sum(jax.tree.leaves(sizes)))


def main(argv=None):
    from hiors_jax.models import config as model_config
    from hiors_jax.models import pi0, weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pi0", choices=sorted(model_config.PRESETS))
    args = parser.parse_args(argv)
    config = model_config.get_preset(args.preset)
    shapes = pi0.param_shapes(config)  # jax.eval_shape: nothing is allocated
    total = weights.count_params(shapes)
    print(f"preset {args.preset}: {total:,} parameters")
    for which in FILTERS:
        try:
            n = trainable_count(config, shapes, which)
        except ValueError as err:
            print(f"  {which:14s} -- ({err})")
            continue
        print(f"  {which:14s} {n:15,d} trainable  ({100 * n / total:6.2f} %)")


if __name__ == "__main__":
    main()
