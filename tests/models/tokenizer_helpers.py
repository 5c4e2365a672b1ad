"""A tiny SentencePiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3), trained in seconds."""

import io
import pathlib

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
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
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
    path = directory / "tiny_paligemma.model"
    path.write_bytes(model.getvalue())
    return path
