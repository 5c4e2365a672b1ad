"""Model configurations: PI0 / PI0.5 and their parts, real-size and tiny presets.

Configs are frozen dataclasses so they can be static arguments of `jax.jit`. Field names follow openpi where
openpi has one (`action_dim`, `action_horizon`, `max_token_len`, `pi05`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
PALIGEMMA_VOCAB_SIZE = 257_152


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """openpi's `lora.LoRAConfig`: low-rank adapters with `scaling = alpha / rank` (alpha / sqrt(rank) with rslora).

    openpi's attention adapters use the scaling; its feed-forward adapters ignore alpha (scaling 1).
    """

    rank: int
    alpha: float = 1.0
    rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """One expert of the shared-attention transformer (openpi `gemma.Config`, incl. its `lora_configs`)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    lora_attn: LoraConfig | None = None  # openpi lora_configs["attn"]: q, kv and attn_vec einsums
    lora_ffn: LoraConfig | None = None  # openpi lora_configs["ffn"]: gating_einsum and linear

    def replace(self, **changes) -> GemmaConfig:
        return dataclasses.replace(self, **changes)

    def with_lora(self, rank: int, alpha: float | None = None) -> GemmaConfig:
        """LoRA of `rank` on attention and feed-forward, alpha = rank unless given (openpi's shipped variants)."""
        lora = LoraConfig(rank=rank, alpha=float(rank if alpha is None else alpha))
        return self.replace(lora_attn=lora, lora_ffn=lora)


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """SigLIP ViT image encoder with a linear projector ("head") to the language-model width."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 14
    image_size: int = 224

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_2B = GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
GEMMA_300M = GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)
SO400M_14 = SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16)
GEMMA_2B_LORA = GEMMA_2B.with_lora(16)  # openpi gemma_2b_lora: rank 16, alpha 16
GEMMA_300M_LORA = GEMMA_300M.with_lora(32)  # openpi gemma_300m_lora: rank 32, alpha 32

# Rematerialisation of each scanned layer (SigLIP blocks and Gemma layers) in the backward pass:
# "none" keeps every activation, "dots" saves matmul outputs without batch dims (recomputes the cheap rest),
# "full" saves only each layer's input (openpi's nothing_saveable, always on in openpi's training).
REMAT_POLICIES = ("none", "dots", "full")


def remat_policy(remat: str | bool):
    """The jax.checkpoint policy of a REMAT_POLICIES name (None for "none": no rematerialisation)."""
    name = ("full" if remat else "none") if isinstance(remat, bool) else remat
    if name == "none":
        return None
    if name == "dots":
        # Attention logits have batch dims (B, K) and are the largest activations: recompute them.
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    raise ValueError(f"remat={remat!r} must be one of {REMAT_POLICIES} (or True / False)")


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """PI0 (pi05=False) or PI0.5 (pi05=True).

    `dtype` is the activation (compute) dtype; parameters keep whatever dtype they were created or loaded in
    (f32 params with bf16 compute is openpi's mixed-precision training policy). `remat` is the rematerialisation
    policy of every scanned layer, one of REMAT_POLICIES; it defaults to "full" (openpi's training setting; it does
    not change forward results). `True` / `False` are accepted for "full" / "none".
    `state_input` False gives PI0 a zero state token, so it acts from the images and prompt alone (the state
    still pads/validates as usual); openpi's models have True.
    """

    vlm: GemmaConfig = GEMMA_2B
    expert: GemmaConfig = GEMMA_300M
    vision: SiglipConfig = SO400M_14
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    pi05: bool = False
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 0  # 0 selects openpi's default: 48 for PI0, 200 for PI0.5
    image_keys: tuple[str, ...] = IMAGE_KEYS
    dtype: str = "bfloat16"
    remat: str = "full"
    state_input: bool = True

    def __post_init__(self):
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.max_token_len == 0:
            object.__setattr__(self, "max_token_len", 200 if self.pi05 else 48)
        _validate(self)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.vision.num_tokens + self.max_token_len

    @property
    def suffix_len(self) -> int:
        return self.action_horizon + (0 if self.pi05 else 1)

    def replace(self, **changes) -> Pi0Config:
        return dataclasses.replace(self, **changes)


def _validate(config: Pi0Config) -> None:
    vlm, expert = config.vlm, config.expert
    # Both experts share one attention: everything but width and mlp_dim must agree (openpi asserts the same).
    for field in ("depth", "num_heads", "num_kv_heads", "head_dim"):
        if getattr(vlm, field) != getattr(expert, field):
            raise ValueError(
                f"Pi0Config: vlm.{field}={getattr(vlm, field)} differs from expert.{field}={getattr(expert, field)}; "
                "the shared-attention experts must agree on depth, num_heads, num_kv_heads and head_dim"
            )
    if vlm.num_heads % vlm.num_kv_heads:
        raise ValueError(f"Pi0Config: num_heads={vlm.num_heads} is not a multiple of num_kv_heads={vlm.num_kv_heads}")
    if vlm.head_dim % 2:
        raise ValueError(f"Pi0Config: head_dim={vlm.head_dim} must be even for rotary embeddings")
    if config.vision.image_size % config.vision.patch_size:
        raise ValueError(
            f"Pi0Config: vision.image_size={config.vision.image_size} is not a multiple of "
            f"vision.patch_size={config.vision.patch_size}"
        )
    if config.remat not in REMAT_POLICIES:
        raise ValueError(f"Pi0Config: remat={config.remat!r} must be one of {REMAT_POLICIES} (or True / False)")
    for name, cfg in (("vlm", vlm), ("expert", expert)):
        for kind in ("lora_attn", "lora_ffn"):
            lora = getattr(cfg, kind)
            if lora is not None and (lora.rank <= 0 or lora.alpha <= 0):
                raise ValueError(f"Pi0Config: {name}.{kind} has rank={lora.rank}, alpha={lora.alpha}; both must be > 0")
    if config.pi05 and not config.state_input:
        raise ValueError("Pi0Config: state_input=False is for PI0 (PI0.5 reads the state as prompt tokens)")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"Pi0Config: dtype={config.dtype!r} must be 'float32' or 'bfloat16'")
    for name in ("action_dim", "action_horizon", "max_token_len", "vocab_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"Pi0Config: {name}={getattr(config, name)} must be positive")
    if len(set(config.image_keys)) != len(config.image_keys) or not config.image_keys:
        raise ValueError(f"Pi0Config: image_keys={config.image_keys} must be non-empty and unique")


def pi0_config(**changes) -> Pi0Config:
    """The real PI0: PaliGemma (gemma_2b + So400m/14) with the gemma_300m action expert, 3.238e9 params."""
    return Pi0Config(**changes)


def pi05_config(**changes) -> Pi0Config:
    """The real PI0.5: adaptive-RMSNorm action expert, state in the prompt."""
    return Pi0Config(pi05=True, **changes)


TINY_VLM = GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16)
TINY_EXPERT = GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=16)
TINY_VISION = SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=56)


def tiny_config(pi05: bool = False, **changes) -> Pi0Config:
    """A few-hundred-thousand-parameter model with every code path of the real one (grouped-query attention,
    expert width != vlm width != heads*head_dim, scanned layers), for tests and the laptop demo."""
    defaults = dict(
        vlm=TINY_VLM,
        expert=TINY_EXPERT,
        vision=TINY_VISION,
        vocab_size=1024,
        pi05=pi05,
        action_dim=32,
        action_horizon=50,
        max_token_len=80 if pi05 else 16,  # PI0.5 writes the state into the prompt
        dtype="float32",
    )
    defaults.update(changes)
    return Pi0Config(**defaults)


SIM_VLM = GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16)
SIM_EXPERT = GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=16)
SIM_VISION = SiglipConfig(width=64, depth=2, mlp_dim=128, num_heads=2, patch_size=16, image_size=64)


def sim_config(**changes) -> Pi0Config:
    """PI0 small enough to train on the simulated X-Trainer on a CPU (benchmarks/sim_hiors.py): the real architecture
    (3 cameras, shared-attention experts, GQA, flow matching over 50x32) at 64x64 images in 16x16 patches, two
    layers per tower (vision 64 wide, LM 64, action expert 32), f32 compute and no rematerialisation.

    Why: a training step's cost grows with prefix tokens x LM width. Measured at batch 32 on 2 CPU cores: 8x8
    patches (64 tokens per camera) with an LM 128 wide took 740 ms a step, 16x16 patches 200 ms, and halving the
    widths about 130 ms at batch 16, so a few thousand updates fit in minutes. 64 px keeps the 5 cm target ball
    2-4 px wide in the top camera.

    No state input (`state_input=False`): the sim's scripted demos leave one start pose along straight joint-space
    lines, so a state on such a line already tells where the goal is. With the state, this model learned that
    shortcut and, once its first chunk missed, each further query extrapolated further away (easy task, 50 demos,
    replayed from the demos' own initial conditions: 10% success, 12 cm from the target after 3000 updates with the
    state; 60%, 1.8 cm after 2500 without; benchmarks/sim_base.py)."""
    defaults = dict(
        vlm=SIM_VLM,
        expert=SIM_EXPERT,
        vision=SIM_VISION,
        vocab_size=256,
        action_dim=32,
        action_horizon=50,
        max_token_len=16,
        dtype="float32",
        remat="none",
        state_input=False,
    )
    defaults.update(changes)
    return Pi0Config(**defaults)


def lora_config(pi05: bool = False, **changes) -> Pi0Config:
    """openpi's LoRA fine-tuning model: gemma_2b_lora + gemma_300m_lora (pi0_*_low_mem_finetune configs)."""
    return Pi0Config(vlm=GEMMA_2B_LORA, expert=GEMMA_300M_LORA, pi05=pi05, **changes)


def tiny_lora_config(pi05: bool = False, **changes) -> Pi0Config:
    """The tiny preset with LoRA rank 4 on the LM and rank 8 on the expert (alpha = rank), as the LoRA fixture."""
    return tiny_config(pi05=pi05, vlm=TINY_VLM.with_lora(4), expert=TINY_EXPERT.with_lora(8), **changes)


PRESETS = {
    "pi0": pi0_config,
    "pi05": pi05_config,
    "pi0_lora": lambda **kw: lora_config(pi05=False, **kw),
    "pi05_lora": lambda **kw: lora_config(pi05=True, **kw),
    "pi0_sim": sim_config,
    "pi0_tiny": lambda **kw: tiny_config(pi05=False, **kw),
    "pi05_tiny": lambda **kw: tiny_config(pi05=True, **kw),
    "pi0_tiny_lora": lambda **kw: tiny_lora_config(pi05=False, **kw),
    "pi05_tiny_lora": lambda **kw: tiny_lora_config(pi05=True, **kw),
}


def get_preset(name: str, **changes) -> Pi0Config:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**changes)
