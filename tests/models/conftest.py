import pathlib
import sys

# Test helper modules (pi0_test_helpers, tokenizer_helpers) sit beside the tests; importlib mode doesn't add the dir.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
