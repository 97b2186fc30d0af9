"""Character tokenizer built locally (no hub download) with the `tokenizers` library."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
#: Every character the tasks use; the vocabulary is fixed so models and tokenizers stay compatible.
CHARSET = "0123456789+-*=[]@?# "


@lru_cache(maxsize=1)
def build_tokenizer() -> PreTrainedTokenizerFast:
    """A one-token-per-character tokenizer with ``<pad>`` and ``<eos>``."""
    vocab = {PAD: 0, EOS: 1, **{ch: i + 2 for i, ch in enumerate(CHARSET)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)
    tokenizer.padding_side = "left"
    return tokenizer
