import pathlib
import sys

# Shared builders (agent_helpers) sit in tests/agents; importlib mode doesn't add the dir.
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "agents"))

import pytest  # noqa: E402
from agent_helpers import free_ports as _free_ports  # noqa: E402


@pytest.fixture
def free_ports():
    return _free_ports(2)
