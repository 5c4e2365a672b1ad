"""PaliGemma SentencePiece prompt tokenizer with openpi's PI0 / PI0.5 prompt formats.

The SentencePiece model file is supplied by the user (e.g. a local copy of big_vision's
``paligemma_tokenizer.model``); nothing is downloaded.

* PI0: ``BOS + encode(clean(prompt)) + encode("\\n")`` (the newline, encoded on its own, marks the start of
  the answer).
* PI0.5 with discrete state: ``BOS + encode("Task: {clean(prompt)}, State: {b0 b1 ...};\\nAction: ")`` where the
  bins are the (already normalised, unpadded) state digitised into 256 bins over [-1, 1].

``clean`` strips the prompt and turns ``"_"`` and ``"\\n"`` into spaces. ``prompt_format="lerobot"`` instead
reproduces lerobot/hiors (HF tokenizer) for checkpoints trained that way: ``BOS + encode(prompt + "\\n")``, no
cleaning (the newline is not added twice). Sequences are right-padded with id 0
to ``max_len`` with a boolean mask. A prompt longer than ``max_len`` is an error unless truncation is asked
for (openpi truncates with a warning, which silently cuts the task text or the state of a PI0.5 prompt).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

PAD_ID = 0
PROMPT_FORMATS = ("openpi", "lerobot")
NUM_STATE_BINS = 256
# openpi: digitize(x, linspace(-1, 1, 257)[:-1]) - 1, so x < -1 gives -1 and x >= 1 - 2/256 gives 255.
_STATE_BIN_EDGES = np.linspace(-1.0, 1.0, NUM_STATE_BINS + 1)[:-1]


class PromptTooLongError(ValueError):
    """A tokenized prompt does not fit in ``max_len`` tokens."""


def clean_prompt(prompt: str) -> str:
    """openpi's cleaning: strip, then ``"_"`` and ``"\\n"`` become spaces (case kept)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Bins 0..255 of a 1-D quantile-normalised state (values below -1 give -1, as in openpi)."""
    state = np.asarray(state)
    if state.ndim != 1:
        raise ValueError(f"state must be 1-D (one robot state), got shape {state.shape}")
    if not np.issubdtype(state.dtype, np.number) or not np.all(np.isfinite(state)):
        raise ValueError(f"state must be finite numbers, got {state!r}")
    return np.digitize(state, bins=_STATE_BIN_EDGES) - 1


def pi05_prompt_text(prompt: str, state: np.ndarray) -> str:
    """The PI0.5 discrete-state prompt string before tokenization."""
    bins = " ".join(str(int(b)) for b in discretize_state(state))
    return f"Task: {clean_prompt(prompt)}, State: {bins};\nAction: "


class PaligemmaTokenizer:
    """Tokenize prompts for PI0 / PI0.5 from a local SentencePiece model file."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        max_len: int = 48,
        *,
        truncate: bool = False,
        prompt_format: str = "openpi",
    ):
        import sentencepiece

        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")

        path = pathlib.Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"SentencePiece model {path} not found (PI0 uses PaliGemma's paligemma_tokenizer.model; "
                "give a local path, nothing is downloaded)"
            )
        if not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(path.read_bytes())
        except RuntimeError as err:
            raise ValueError(f"{path} is not a SentencePiece model: {err}") from err
        if self._sp.bos_id() < 0:
            raise ValueError(f"SentencePiece model {path} has no BOS piece; PaliGemma's has BOS id 2")
        self.model_path = path
        self.max_len = max_len
        self.truncate = truncate
        self.prompt_format = prompt_format

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        return list(self._sp.encode(text, add_bos=add_bos))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        """Unpadded ids: PI0 format without ``state``, PI0.5 discrete-state format with it."""
        if state is None:
            if self.prompt_format == "lerobot":
                if not isinstance(prompt, str):
                    raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
                return self.encode(prompt if prompt.endswith("\n") else prompt + "\n", add_bos=True)
            return self.encode(clean_prompt(prompt), add_bos=True) + self.encode("\n")
        return self.encode(pi05_prompt_text(prompt, state), add_bos=True)

    def tokenize(
        self, prompt: str, state: np.ndarray | None = None, *, truncate: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int32 (max_len,), mask bool (max_len,))``; see the module docstring for the formats."""
        ids = self.token_ids(prompt, state)
        if len(ids) > self.max_len:
            if not (self.truncate if truncate is None else truncate):
                raise PromptTooLongError(
                    f"prompt is {len(ids)} tokens, more than max_len={self.max_len}: {prompt!r} "
                    "(shorten it, raise max_token_len, or pass truncate=True)"
                )
            logger.warning("prompt is %d tokens, truncated to max_len=%d: %r", len(ids), self.max_len, prompt)
            ids = ids[: self.max_len]
        tokens = np.full(self.max_len, PAD_ID, dtype=np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros(self.max_len, dtype=bool)
        mask[: len(ids)] = True
        return tokens, mask

    def tokenize_batch(
        self,
        prompts: Sequence[str],
        states: np.ndarray | Sequence[np.ndarray] | None = None,
        *,
        truncate: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens int32 (B, max_len), mask bool (B, max_len))`` for B prompts (and B states for PI0.5)."""
        if isinstance(prompts, str):
            raise TypeError("tokenize_batch takes a sequence of prompts; use tokenize for a single prompt")
        if states is not None and len(states) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(states)} states")
        rows = [
            self.tokenize(p, None if states is None else states[i], truncate=truncate) for i, p in enumerate(prompts)
        ]
        if not rows:
            return np.zeros((0, self.max_len), np.int32), np.zeros((0, self.max_len), bool)
        tokens, masks = zip(*rows, strict=True)
        return np.stack(tokens), np.stack(masks)


def train_tiny_tokenizer(path: str | os.PathLike, corpus: Sequence[str], vocab_size: int = 160) -> pathlib.Path:
    """Train a small SentencePiece model with PaliGemma's special ids (pad 0, eos 1, bos 2, unk 3).

    For the laptop demo and tests only: the real PaliGemma vocabulary cannot be downloaded here, and a tiny model
    exercises the same tokenizer code path. `vocab_size` must not exceed the tiny model's embedding rows.
    """
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) * 20),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        add_dummy_prefix=False,
        byte_fallback=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path
