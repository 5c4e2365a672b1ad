"""`TrainerConfig`: agentlace's dataclass, field for field, so the connect-time config check matches."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class TrainerConfig:
    """Same fields, order and defaults as agentlace's `TrainerConfig` (the order is part of the handshake)."""

    port_number: int = 5555
    broadcast_port: int = 5556
    request_types: list[str] = field(default_factory=list)
    rate_limit: float | None = None
    version: str = "0.0.2"
    experimental_pipeline_port: int | None = None

    def __post_init__(self) -> None:
        for name in ("port_number", "broadcast_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise ValueError(f"TrainerConfig.{name} must be a TCP port in 1..65535, got {port!r}")
        if self.port_number == self.broadcast_port:
            raise ValueError("TrainerConfig.port_number and broadcast_port must differ")
        if not isinstance(self.request_types, list) or not all(isinstance(t, str) for t in self.request_types):
            raise ValueError(f"TrainerConfig.request_types must be a list of str, got {self.request_types!r}")
        if self.rate_limit is not None and not (isinstance(self.rate_limit, int | float) and self.rate_limit > 0):
            raise ValueError(f"TrainerConfig.rate_limit must be None or a positive number, got {self.rate_limit!r}")

    def to_json(self) -> str:
        """The exact string agentlace returns for `{"type": "hash"}` (compact separators, field order)."""
        return json.dumps(asdict(self), separators=(",", ":"))
