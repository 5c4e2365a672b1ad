"""The one definition of the teleoperation flag shared by the robot PC, the bridge, the sim and the env.

The X-Trainer's event topic publishes these two strings; anything else is refused loudly (the original
Hi-ORS compared against a different string, so its intervention flag was always False).
"""

from __future__ import annotations

HUMAN_TAKES_OVER = "server to teleoperation"
POLICY_TAKES_OVER = "teleoperation to server"
KNOWN_FLAGS = (None, HUMAN_TAKES_OVER, POLICY_TAKES_OVER)


def is_teleop(flag: str | None) -> bool:
    """True while the human drives. No flag yet means the policy drives."""
    if flag not in KNOWN_FLAGS:
        raise ValueError(
            f"unknown server_teleoperation_flag {flag!r}; expected None, {HUMAN_TAKES_OVER!r} or {POLICY_TAKES_OVER!r}"
        )
    return flag == HUMAN_TAKES_OVER


def flag_for(teleop: bool) -> str:
    return HUMAN_TAKES_OVER if teleop else POLICY_TAKES_OVER
