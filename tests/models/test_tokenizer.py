"""PaliGemma prompt tokenizer, with a tiny SentencePiece model trained here (Gemma's special ids)."""

import importlib.util
import logging
import pathlib

import numpy as np
import pytest

from hiors_jax.models.tokenizer import (
    PaligemmaTokenizer,
    PromptTooLongError,
    clean_prompt,
    discretize_state,
    pi05_prompt_text,
)

# Test helpers are loaded by path: tests run in importlib mode, so tests/models is not on sys.path.
_spec = importlib.util.spec_from_file_location(
    "tokenizer_helpers", pathlib.Path(__file__).with_name("tokenizer_helpers.py")
)
tokenizer_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tokenizer_helpers)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tokenizer_helpers.train_tiny_sentencepiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def sp(model_path):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(model_path))


def test_tiny_model_has_gemma_special_ids(sp):
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)


def test_pi0_prompt_is_bos_text_newline_then_padding(model_path, sp):
    tok = PaligemmaTokenizer(model_path, max_len=32)
    tokens, mask = tok.tokenize("  pick_up the red\nblock \n")
    expected = [2] + sp.encode("pick up the red block") + sp.encode("\n")
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (32,)
    assert tokens[: len(expected)].tolist() == expected
    assert tokens[len(expected) :].tolist() == [0] * (32 - len(expected))
    assert mask.tolist() == [True] * len(expected) + [False] * (32 - len(expected))
    assert tok.decode(tokens[mask]) == "pick up the red block\n"


def test_clean_prompt_matches_openpi():
    assert clean_prompt("  put_the cube\nin the box\n ") == "put the cube in the box"
    assert clean_prompt("Keep Case") == "Keep Case"
    with pytest.raises(TypeError, match="prompt must be a str"):
        clean_prompt(b"bytes")


def test_exact_fit_and_too_long(model_path, caplog):
    probe = PaligemmaTokenizer(model_path, max_len=200)
    n = len(probe.token_ids("fold the towel on the table"))
    tokens, mask = PaligemmaTokenizer(model_path, max_len=n).tokenize("fold the towel on the table")
    assert mask.all() and tokens.shape == (n,)

    short = PaligemmaTokenizer(model_path, max_len=n - 2)
    with pytest.raises(PromptTooLongError, match=f"{n} tokens, more than max_len={n - 2}"):
        short.tokenize("fold the towel on the table")
    with caplog.at_level(logging.WARNING, logger="hiors_jax.models.tokenizer"):
        cut, cut_mask = short.tokenize("fold the towel on the table", truncate=True)
    assert "truncated" in caplog.text
    assert cut.tolist() == probe.token_ids("fold the towel on the table")[: n - 2] and cut_mask.all()
    opt_in = PaligemmaTokenizer(model_path, max_len=n - 2, truncate=True)
    np.testing.assert_array_equal(opt_in.tokenize("fold the towel on the table")[0], cut)


def test_discretize_state_bins_and_edges():
    edges = np.linspace(-1, 1, 257)[:-1]
    state = np.array([-1.0, -1.5, 1.0, 5.0, 0.0, edges[128] - 1e-9, edges[128], 0.9921875, 0.99])
    bins = discretize_state(state)
    assert bins.tolist() == [0, -1, 255, 255, 128, 127, 128, 255, 254]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 1000)
    b = discretize_state(x)
    # Each value lies in its bin [edge_b, edge_b + 2/256).
    assert np.all(edges[b] <= x) and np.all(x < edges[b] + 2 / 256 + 1e-12)
    with pytest.raises(ValueError, match="finite"):
        discretize_state(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        discretize_state(np.zeros((2, 3)))


def test_pi05_prompt_has_state_string_and_no_separate_newline(model_path, sp):
    state = np.array([-1.0, 0.0, 0.5, 1.0, -1.5], dtype=np.float32)
    text = pi05_prompt_text("pick_up the cup\n", state)
    assert text == "Task: pick up the cup, State: 0 128 192 255 -1;\nAction: "
    tok = PaligemmaTokenizer(model_path, max_len=200)
    tokens, mask = tok.tokenize("pick_up the cup\n", state)
    expected = [2] + sp.encode(text)
    assert tokens[mask].tolist() == expected
    assert tok.decode(tokens[mask]) == text


def test_batch_helper(model_path):
    tok = PaligemmaTokenizer(model_path, max_len=24)
    prompts = ["put the objects in the box", "open the drawer"]
    tokens, mask = tok.tokenize_batch(prompts)
    assert tokens.shape == mask.shape == (2, 24) and tokens.dtype == np.int32
    for i, prompt in enumerate(prompts):
        single, single_mask = tok.tokenize(prompt)
        np.testing.assert_array_equal(tokens[i], single)
        np.testing.assert_array_equal(mask[i], single_mask)
    states = np.array([[0.1, -0.2], [0.9, 0.0]])
    tok05 = PaligemmaTokenizer(model_path, max_len=64)
    t05, _ = tok05.tokenize_batch(prompts, states)
    np.testing.assert_array_equal(t05[1], tok05.tokenize(prompts[1], states[1])[0])
    with pytest.raises(ValueError, match="2 prompts but 1 states"):
        tok05.tokenize_batch(prompts, states[:1])
    with pytest.raises(TypeError, match="sequence of prompts"):
        tok.tokenize_batch("one prompt")


def test_lerobot_prompt_format(model_path, sp):
    tok = PaligemmaTokenizer(model_path, max_len=32, prompt_format="lerobot")
    tokens, mask = tok.tokenize("pick_up the red block")  # no cleaning: "_" stays
    assert tokens[mask].tolist() == [2] + sp.encode("pick_up the red block\n")
    already = tok.tokenize("pick up the red block\n")[0]
    openpi = PaligemmaTokenizer(model_path, max_len=32).tokenize("pick up the red block")[0]
    # "\n" is a user-defined piece, so one call and two calls agree on a clean prompt.
    np.testing.assert_array_equal(already, openpi)
    with pytest.raises(ValueError, match="prompt_format"):
        PaligemmaTokenizer(model_path, prompt_format="hf")


def test_constructor_errors(tmp_path, model_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        PaligemmaTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        PaligemmaTokenizer(bad)
    with pytest.raises(ValueError, match="max_len"):
        PaligemmaTokenizer(model_path, max_len=0)
