"""A tiny SentencePiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3), trained in seconds."""

import pathlib

from hiors_jax.models.tokenizer import train_tiny_tokenizer

CORPUS = [
    "pick up the red block and put it in the box",
    "put the objects in the box",
    "fold the towel on the table",
    "open the drawer and take out the cup",
    "Task: pick up the cup, State: 0 12 127 128 255 3 64 200;",
    "Action: move the left arm to the right",
    "transfer the cube to the other arm",
    "insert the peg into the socket",
    "State: -1 1 2 3 4 5 6 7 8 9 10 11 99 100 101 254",
]


def train_tiny_sentencepiece(directory: pathlib.Path, vocab_size: int = 160) -> pathlib.Path:
    return train_tiny_tokenizer(directory / "tiny_paligemma.model", CORPUS, vocab_size)
