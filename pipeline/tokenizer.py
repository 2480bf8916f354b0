"""Byte-level BPE tokenizer, trained with `tokenizers`, saved as a transformers tokenizer.

Byte-level means every string maps to bytes first, so there is no unknown input and
`decode(encode(text)) == text` for any Unicode text, whitespace included.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3, in this order


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False and trim_offsets=False keep the mapping byte-exact and the
    # character offsets honest (QA relies on them).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, always
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    # Pretraining documents are "<bos> text <eos>", joined into one stream. A single input
    # gets "<bos> text" (a prompt to continue, or a text whose last token a classifier reads);
    # a pair gets "<bos> question <eos> context" (QA).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {EOS} $B:1",
        special_tokens=[(BOS, bos), (EOS, eos)],
    )
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        # The default clean-up rewrites " ." to "." on decode and would break round trips.
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """Number of UTF-8 bytes each token id stands for (0 for special tokens).

    Byte-level BPE writes each byte as one printable character, so a token's byte count is
    the length of its vocabulary string. Bits-per-byte divides the summed NLL by these.
    """
    lengths = np.zeros(len(tokenizer), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    for token, idx in tokenizer.get_vocab().items():
        lengths[idx] = 0 if idx in special else len(token)
    return lengths
