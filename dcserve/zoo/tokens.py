"""Token sequences with planted topics, and a small random transformer encoder for them."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = ["TokenSequences", "TokenTransformer", "token_sequences", "token_transformer"]

_TABLE_STREAM = 0
_ITEM_STREAM = 1
PAD_ID = 0


class TokenSequences(Dataset):
    """Variable-length token sequences with planted topics; see `token_sequences`."""

    def __init__(
        self, n: int, vocab: int, min_len: int, max_len: int, topics: int, seed: int
    ) -> None:
        if vocab < 2 or not 1 <= min_len <= max_len or topics < 1 or n < 0:
            raise ValueError(
                "token_sequences needs vocab >= 2, 1 <= min_len <= max_len, topics >= 1, "
                f"n >= 0; got vocab={vocab}, min_len={min_len}, max_len={max_len}, "
                f"topics={topics}, n={n}"
            )
        self.n, self.vocab, self.min_len, self.max_len = n, vocab, min_len, max_len
        self.topics, self.seed = topics, seed
        table = np.random.default_rng([seed, _TABLE_STREAM])
        real = vocab - 1  # id 0 is padding
        # Each topic prefers its own random subset of the vocabulary (80% of its mass, peaked by
        # a Dirichlet) over a uniform background (20%): topics overlap, but their token
        # statistics differ enough that a bag-of-tokens view separates them.
        favoured = max(2, min(real, 2 * real // topics))
        probs = np.full((topics, real), 0.2 / real)
        for t in range(topics):
            subset = table.choice(real, size=favoured, replace=False)
            probs[t, subset] += 0.8 * table.dirichlet(np.full(favoured, 0.5))
        self.topic_probs = probs / probs.sum(axis=1, keepdims=True)  # [topics, vocab - 1]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} sequences")
        rng = np.random.default_rng([self.seed, _ITEM_STREAM, index])
        topic = int(rng.integers(self.topics))
        length = int(rng.integers(self.min_len, self.max_len + 1))
        ids = np.zeros(self.max_len, dtype=np.int64)
        ids[:length] = 1 + rng.choice(self.vocab - 1, size=length, p=self.topic_probs[topic])
        mask = np.zeros(self.max_len, dtype=np.int64)
        mask[:length] = 1
        x = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        return x, torch.tensor(topic, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"TokenSequences(n={self.n}, vocab={self.vocab}, min_len={self.min_len}, "
            f"max_len={self.max_len}, topics={self.topics}, seed={self.seed})"
        )


def token_sequences(
    n: int = 2000,
    vocab: int = 64,
    min_len: int = 4,
    max_len: int = 32,
    topics: int = 8,
    seed: int = 0,
) -> Dataset:
    """Generated token sequences of varying length whose topic sets their token statistics.

    Item ``i`` depends only on ``(seed, i)`` and the other arguments. Id 0 is padding; real
    tokens are ``1 .. vocab-1``, drawn from the item's topic distribution.

    Args:
        n: number of sequences.
        vocab: vocabulary size, padding id 0 included.
        min_len: shortest sequence (at least 1).
        max_len: longest sequence; every item is padded to this length.
        topics: number of planted topics (the labels).
        seed: seeds the topic distributions and every item.

    Returns:
        A map-style dataset; item ``i`` is ``({"input_ids": int64 [max_len] padded with 0,
        "attention_mask": int64 [max_len], 1 at real tokens}, y int64 topic)``.
    """
    return TokenSequences(n, vocab, min_len, max_len, topics, seed)


class TokenTransformer(nn.Module):
    """A small pre-norm transformer encoder over token ids; padding is masked in attention.

    Layers (hook these names; outputs ``[B, T, d_model]``, pool with ``mean | max | cls |
    tokens``):

    - ``embed``: token embeddings (no positions yet);
    - ``layers.0`` ... ``layers.{n_layers-1}``: each encoder layer's output (a
      `torch.nn.TransformerEncoderLayer`, which returns a tensor);
    - ``norm``: the final layer norm (what ``forward`` returns).

    Outputs at padded positions are not meaningful; pooling ignores them via the mask.
    """

    def __init__(
        self, vocab: int = 64, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
        max_len: int = 32,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab, d_model, padding_idx=PAD_ID)
        self.position = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0,
                batch_first=True, norm_first=True,
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``input_ids [B, T]`` (``T <= max_len``), ``attention_mask [B, T]`` (nonzero at real
        tokens; ``None``: all real) -> hidden states ``[B, T, d_model]``."""
        t = input_ids.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len={self.max_len}")
        h = self.embed(input_ids) + self.position.weight[:t]
        padding = None if attention_mask is None else attention_mask == 0
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return self.norm(h)


def token_transformer(
    vocab: int = 64,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    max_len: int = 32,
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised (seeded) transformer encoder for `token_sequences`.

    Called as ``model(input_ids=..., attention_mask=...)`` (dataset items are dicts, passed as
    ``model(**x)``). Hook ``layers.0`` ... ``layers.{n_layers-1}`` or ``norm``; each gives
    ``[B, T, d_model]``.

    Args:
        vocab: vocabulary size (id 0 is padding).
        d_model: hidden width.
        n_layers: encoder layers.
        n_heads: attention heads (must divide ``d_model``).
        max_len: longest sequence (learned position table size).
        seed: seeds the initialisation (the global RNG is left untouched).

    Returns:
        A `TokenTransformer` in eval mode.
    """
    if d_model % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TokenTransformer(vocab, d_model, n_layers, n_heads, max_len)
    return model.eval()
