import pathlib
import sys

# Shared builders (agent_helpers in tests/agents, fake_robot_env here); importlib mode doesn't add the dirs.
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "agents"))
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest  # noqa: E402
from net_helpers import free_ports as _free_ports  # noqa: E402


@pytest.fixture
def free_ports():
    return _free_ports(2)
