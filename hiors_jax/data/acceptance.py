"""Hi-ORS acceptance rules: which episodes train the policy, which of their transitions, and with what weight.

An episode is accepted when its score (the success label as 1/0, or its return) reaches the threshold m
(the paper's I_m(tau) = 1[R(tau) >= m]); m is fixed or follows a non-decreasing schedule over iterations
(m_1 <= ... <= m_N). Two filters clean what is kept (the paper's ablation: without them success fell from
80 % to 20 % / 60 %):
- short episodes: an episode with <= `short_episode_max` transitions is dropped whole;
- no-op transitions: a transition whose recorded states barely moved (max over `noop_dims` of the
  per-dim population std of its valid recorded rows <= `noop_eps`; fewer than 2 rows counts as not moving)
  is dropped, except the episode's last transition, which is always kept.
Each accepted episode gets a per-sample weight for the reward-weighted loss: 1.0 ("binary", the paper's
indicator) or its return times `return_weight_scale` ("return"). Every decision is counted by reason.

Differences from the original: the threshold is >= (the paper's), not the code's > 0.7; the schedule exists;
the no-op dims are configurable (the original hard-coded the left arm, dims 0-6); interventions are counted.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

LABEL_SCORES = {"success": 1.0, "failure": 0.0}
REJECT_REASONS = ("short_episode", "below_threshold", "no_label")
DROP_REASONS = ("noop", "short_episode", "rejected_episode")


@dataclasses.dataclass(frozen=True)
class ThresholdSchedule:
    """m as a step function of the iteration: `steps` = ((first_iteration, m), ...), m non-decreasing.

    Before the first step's iteration the first m applies. `ThresholdSchedule.fixed(m)` is a constant.
    """

    steps: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        steps = tuple((int(i), float(m)) for i, m in self.steps)
        if not steps:
            raise ValueError("threshold schedule needs at least one (iteration, m) step")
        for (i0, m0), (i1, m1) in zip(steps, steps[1:], strict=False):
            if i1 <= i0:
                raise ValueError(f"threshold schedule iterations must increase: {i0} then {i1}")
            if m1 < m0:
                raise ValueError(f"threshold schedule must be non-decreasing (m_1 <= ... <= m_N): {m0} then {m1}")
        if not all(math.isfinite(m) for _, m in steps):
            raise ValueError(f"threshold schedule values must be finite, got {steps}")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def fixed(cls, m: float) -> ThresholdSchedule:
        return cls(((0, m),))

    def __call__(self, iteration: int) -> float:
        iterations = [i for i, _ in self.steps]
        k = int(np.searchsorted(iterations, iteration, side="right")) - 1
        return self.steps[max(k, 0)][1]


@dataclasses.dataclass(frozen=True)
class AcceptanceConfig:
    """Every rule's setting; defaults are the paper's (label threshold 1, <= 2 transitions short, eps 1e-3)."""

    threshold: ThresholdSchedule = ThresholdSchedule.fixed(1.0)
    score: str = "label"  # "label": success -> 1, failure -> 0; "return": sum of the episode's rewards
    short_episode_max: int = 2  # episodes with <= this many transitions are dropped
    noop_eps: float = 1e-3
    noop_dims: tuple[int, ...] | None = None  # state dims the no-op filter looks at; None = all
    noop_filter: bool = True
    weighting: str = "binary"  # "binary" (1.0) or "return" (return * return_weight_scale)
    return_weight_scale: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, int | float):
            object.__setattr__(self, "threshold", ThresholdSchedule.fixed(float(self.threshold)))
        if not isinstance(self.threshold, ThresholdSchedule):
            raise ValueError(f"acceptance.threshold must be a number or ThresholdSchedule, got {self.threshold!r}")
        if self.score not in ("label", "return"):
            raise ValueError(f"acceptance.score must be 'label' or 'return', got {self.score!r}")
        if self.weighting not in ("binary", "return"):
            raise ValueError(f"acceptance.weighting must be 'binary' or 'return', got {self.weighting!r}")
        if self.short_episode_max < 0:
            raise ValueError(f"acceptance.short_episode_max must be >= 0, got {self.short_episode_max}")
        if not self.noop_eps >= 0:
            raise ValueError(f"acceptance.noop_eps must be >= 0, got {self.noop_eps}")
        if self.noop_dims is not None:
            dims = tuple(int(d) for d in self.noop_dims)
            if not dims or min(dims) < 0:
                raise ValueError(f"acceptance.noop_dims must be non-empty non-negative indices, got {self.noop_dims}")
            object.__setattr__(self, "noop_dims", dims)


def noop_mask(state_chunks: np.ndarray, row_mask: np.ndarray, dims: Sequence[int] | None, eps: float) -> np.ndarray:
    """(T,) True where a transition's valid recorded states did not move: max_d std_d <= eps (< 2 rows: True)."""
    state_chunks = np.asarray(state_chunks, np.float64)
    row_mask = np.asarray(row_mask, bool)
    if dims is not None:
        if max(dims) >= state_chunks.shape[-1]:
            raise ValueError(f"noop_dims {list(dims)} out of range for {state_chunks.shape[-1]}-d states")
        state_chunks = state_chunks[..., list(dims)]
    n = row_mask.sum(axis=1)
    w = row_mask[..., None]
    safe_n = np.maximum(n, 1)[:, None]
    mean = (state_chunks * w).sum(axis=1) / safe_n
    var = (np.square(state_chunks - mean[:, None, :]) * w).sum(axis=1) / safe_n  # population std, like numpy's
    moved = np.sqrt(var).max(axis=1) > eps
    return ~moved | (n < 2)


def intervention_stats(teleop: np.ndarray, row_mask: np.ndarray) -> dict[str, int]:
    """Human takeovers in an episode from its per-row teleop flags (valid rows, in time order).

    interventions: times control passed to the human (rising edges, starting from policy control);
    teleop_transitions: transitions with any teleop row; teleop_records: teleop rows.
    """
    teleop = np.asarray(teleop, bool) & np.asarray(row_mask, bool)
    flags = np.asarray(teleop)[np.asarray(row_mask, bool)]
    edges = np.count_nonzero(flags[1:] & ~flags[:-1]) + int(bool(len(flags)) and bool(flags[0]))
    return {
        "interventions": int(edges),
        "teleop_transitions": int(np.count_nonzero(teleop.any(axis=1))),
        "teleop_records": int(np.count_nonzero(teleop)),
    }


@dataclasses.dataclass(frozen=True)
class EpisodeDecision:
    """What the rules decided for one episode."""

    accepted: bool
    reason: str | None  # None when accepted, else one of REJECT_REASONS
    score: float
    threshold: float
    keep: np.ndarray  # (T,) bool: transitions kept for training (all False when rejected)
    noop: np.ndarray  # (T,) bool: transitions the no-op filter flags (the last one is never flagged)
    weight: float  # per-sample loss weight of the kept transitions (0.0 when rejected)
    episode_return: float
    interventions: int
    teleop_transitions: int
    teleop_records: int

    @property
    def dropped(self) -> dict[str, int]:
        """Transitions not kept, by reason."""
        n = len(self.keep)
        if self.reason == "short_episode":
            return {"short_episode": n}
        if not self.accepted:
            return {"rejected_episode": n}
        return {"noop": int(np.count_nonzero(self.noop))}


def decide(
    config: AcceptanceConfig,
    *,
    rewards: np.ndarray,
    label: str | None,
    state_chunks: np.ndarray | None,
    row_mask: np.ndarray | None,
    teleop: np.ndarray | None = None,
    iteration: int = 0,
) -> EpisodeDecision:
    """Apply the rules to one episode (transitions in time order).

    rewards: (T,); label: "success", "failure" or None (score="label" rejects unlabelled episodes with reason
    "no_label"); state_chunks (T, R, D) / row_mask (T, R): recorded states (None for demos, which skip the
    no-op filter); teleop: (T, R) per-row flags; iteration: picks m from the schedule.
    """
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be (T,), got shape {rewards.shape}")
    if not np.all(np.isfinite(rewards)):
        raise ValueError("rewards contain NaN or infinity")
    if label is not None and label not in LABEL_SCORES:
        raise ValueError(f"label must be one of {sorted(LABEL_SCORES)} or None, got {label!r}")
    n = len(rewards)
    episode_return = float(rewards.sum())
    threshold = config.threshold(iteration)
    if state_chunks is not None and config.noop_filter:
        noop = noop_mask(state_chunks, row_mask, config.noop_dims, config.noop_eps)
        if n:
            noop[-1] = False  # the last transition carries the outcome: always kept
    else:
        noop = np.zeros(n, bool)
    stats = (
        intervention_stats(teleop, row_mask)
        if teleop is not None and row_mask is not None
        else {"interventions": 0, "teleop_transitions": 0, "teleop_records": 0}
    )
    if config.score == "label":
        score = LABEL_SCORES[label] if label is not None else math.nan
    else:
        score = episode_return
    if n <= config.short_episode_max:
        reason = "short_episode"
    elif math.isnan(score):
        reason = "no_label"
    elif score < threshold:
        reason = "below_threshold"
    else:
        reason = None
    accepted = reason is None
    if not accepted:
        weight = 0.0
    elif config.weighting == "binary":
        weight = 1.0
    else:
        weight = max(episode_return, 0.0) * config.return_weight_scale
    return EpisodeDecision(
        accepted=accepted,
        reason=reason,
        score=score,
        threshold=threshold,
        keep=(~noop) if accepted else np.zeros(n, bool),
        noop=noop,
        weight=float(weight),
        episode_return=episode_return,
        **stats,
    )


class AcceptanceCounters:
    """Running totals of the decisions: episodes by outcome and reason, transitions dropped by reason."""

    def __init__(self) -> None:
        self.episodes = 0
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.transitions = 0
        self.kept = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.interventions = 0
        self.teleop_transitions = 0

    def add(self, decision: EpisodeDecision) -> None:
        self.episodes += 1
        self.transitions += len(decision.keep)
        self.kept += int(np.count_nonzero(decision.keep))
        self.interventions += decision.interventions
        self.teleop_transitions += decision.teleop_transitions
        if decision.accepted:
            self.accepted += 1
        else:
            self.rejected[decision.reason] += 1
        self.dropped.update(decision.dropped)

    def as_dict(self) -> dict[str, int]:
        out = {
            "episodes": self.episodes,
            "accepted": self.accepted,
            "transitions": self.transitions,
            "kept": self.kept,
            "interventions": self.interventions,
            "teleop_transitions": self.teleop_transitions,
        }
        out.update({f"rejected/{r}": self.rejected.get(r, 0) for r in REJECT_REASONS})
        out.update({f"dropped/{r}": self.dropped.get(r, 0) for r in DROP_REASONS})
        return out
