"""Transport test fixtures. The helper module beside this file is made importable for tests and peers."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from transport_test_helpers import free_ports  # noqa: E402

from hiors_jax.transport import TrainerConfig  # noqa: E402


@pytest.fixture
def trainer_config():
    port, bport = free_ports(2)
    return TrainerConfig(port_number=port, broadcast_port=bport, request_types=["send-stats"])
