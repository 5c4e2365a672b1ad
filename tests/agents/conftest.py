import pathlib
import sys

# Shared builders (agent_helpers) sit beside the tests; importlib mode doesn't add the dir.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
