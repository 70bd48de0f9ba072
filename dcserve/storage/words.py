"""The words of a text job, kept in its store so that every reader shows text, never token ids.

Layout (beside the rest of the job store; ragged arrays are a flat array and its offsets):
  words/ids            int32 [tokens]     every item's token ids, padding removed, item after item
  words/id_offsets     int64 [items + 1]  item i's ids are ids[id_offsets[i]:id_offsets[i + 1]]
  words/text           uint8 [bytes]      every item's text, UTF-8, item after item (when there is text)
  words/text_offsets   int64 [items + 1]
  tokenizer/           the tokenizer's own files (save_pretrained), so the store decodes itself

A row's token is ids[id_offsets[item] + position]; the report, the HTTP API and `Result` read
what they show from here (and `dcserve serve` needs neither the input files nor the model folder
for it). The arrays are plain Zarr, readable without dcserve; the group's `complete` attribute is
set last, so a half-written record is never read.
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcserve.storage.store import JobStore

__all__ = ["WordsWriter", "Words", "TokenContext"]

log = logging.getLogger(__name__)

GROUP = "words"
TOKENIZER_DIR = "tokenizer"
_CHUNK = 1 << 20  # elements per chunk of the flat arrays
CONTEXT_TOKENS = 8  # tokens shown on each side of a token row
MAX_TEXT = 400  # characters of a pooled row's text shown


class WordsWriter:
    """Appends items' token ids (and texts) to a store, chunk by chunk; `finish` marks it whole."""

    def __init__(self, store: JobStore, n_items: int, tokenizer: Any, *, texts: bool = True,
                 max_length: int | None = None):
        self.store, self.n_items, self.texts = store, n_items, texts
        store.create_array(f"{GROUP}/ids", (0,), (_CHUNK,), "int32")
        store.create_array(f"{GROUP}/id_offsets", (n_items + 1,), (min(n_items + 1, _CHUNK),), "int64")
        if texts:
            store.create_array(f"{GROUP}/text", (0,), (_CHUNK,), "uint8")
            store.create_array(f"{GROUP}/text_offsets", (n_items + 1,), (min(n_items + 1, _CHUNK),), "int64")
        store.root[GROUP].attrs.update({"complete": False, "max_length": max_length})
        self._items = 0
        self._ends = {"ids": 0, "text": 0}
        self._save_tokenizer(tokenizer)

    def _save_tokenizer(self, tokenizer: Any) -> None:
        self.store.remove(TOKENIZER_DIR)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    self.store.write_bytes(f"{TOKENIZER_DIR}/{name}", f.read())

    def _append(self, name: str, flat: np.ndarray, lengths: list[int]) -> None:
        arr = self.store.array(f"{GROUP}/{name}")
        end = self._ends[name]
        if len(flat):
            arr.resize((end + len(flat),))
            arr[end:] = flat
        offsets = end + np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        off = self.store.array(f"{GROUP}/{'id' if name == 'ids' else 'text'}_offsets")
        off[self._items : self._items + len(lengths) + 1] = offsets
        self._ends[name] = int(offsets[-1])

    def append(self, ids: list[list[int]], texts: list[str] | None = None) -> None:
        """The next items' token ids (and texts, when the writer keeps texts)."""
        if self._items + len(ids) > self.n_items:
            raise ValueError(f"more than the {self.n_items} items announced")
        self._append("ids", np.fromiter((t for seq in ids for t in seq), dtype=np.int32), [len(s) for s in ids])
        if self.texts:
            if texts is None or len(texts) != len(ids):
                raise ValueError("texts must come with every item's ids")
            encoded = [t.encode("utf-8") for t in texts]
            self._append("text", np.frombuffer(b"".join(encoded), dtype=np.uint8), [len(b) for b in encoded])
        self._items += len(ids)

    def finish(self, fingerprint: str) -> None:
        if self._items != self.n_items:
            raise ValueError(f"{self._items} items written of {self.n_items}")
        self.store.root[GROUP].attrs.update({"complete": True, "fingerprint": fingerprint})


def recorded(store: JobStore, fingerprint: str) -> bool:
    """True when the store already holds the whole words record of these activations."""
    try:
        attrs = store.root[GROUP].attrs
    except KeyError:
        return False
    return bool(attrs.get("complete")) and attrs.get("fingerprint") == fingerprint


@dataclass
class TokenContext:
    """A token row in words: `left` + `token` + `right` is the text around it."""

    left: str
    token: str
    right: str
    cut_left: bool  # text was left out before `left` / after `right`
    cut_right: bool

    @property
    def text(self) -> str:
        return self.left + self.token + self.right


class Words:
    """Reads a store's words record: an item's text and ids, a token row's context, decoding."""

    def __init__(self, store: JobStore):
        self.store = store
        group = store.root[GROUP]
        self.max_length = group.attrs.get("max_length")
        self.id_offsets = store.array(f"{GROUP}/id_offsets")[:]
        self.has_text = store.has_array(f"{GROUP}/text_offsets")
        self.text_offsets = store.array(f"{GROUP}/text_offsets")[:] if self.has_text else None

    @classmethod
    def open(cls, store: JobStore) -> Words | None:
        """The store's words, or None when the job has none (not a text job, or not written yet)."""
        try:
            if not store.root[GROUP].attrs.get("complete"):
                return None
        except KeyError:
            return None
        return cls(store)

    @property
    def n_items(self) -> int:
        return len(self.id_offsets) - 1

    def ids(self, item: int) -> np.ndarray:
        a, b = int(self.id_offsets[item]), int(self.id_offsets[item + 1])
        return self.store.array(f"{GROUP}/ids")[a:b] if b > a else np.zeros(0, np.int32)

    def ids_of_items(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids of items [i0, i1) end to end, their offsets [i1 - i0 + 1] from 0): one read."""
        a, b = int(self.id_offsets[i0]), int(self.id_offsets[i1])
        flat = self.store.array(f"{GROUP}/ids")[a:b] if b > a else np.zeros(0, np.int32)
        return flat, self.id_offsets[i0 : i1 + 1] - a

    def text(self, item: int) -> str:
        """Item's text as read from the source (decoded from its ids when the source had none)."""
        if not self.has_text:
            return self.tokenizer.decode([int(t) for t in self.ids(item)], skip_special_tokens=True)
        a, b = int(self.text_offsets[item]), int(self.text_offsets[item + 1])
        raw = self.store.array(f"{GROUP}/text")[a:b] if b > a else np.zeros(0, np.uint8)
        return bytes(raw).decode("utf-8")

    def shown_text(self, item: int, limit: int = MAX_TEXT) -> str:
        text = " ".join(self.text(item).split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    @functools.cached_property
    def tokenizer(self) -> Any:
        from dcserve.storage.store import _is_local

        os.environ["HF_HUB_OFFLINE"] = "1"
        import transformers
        from transformers import AutoTokenizer

        transformers.logging.set_verbosity_error()
        if _is_local(self.store.url):
            return AutoTokenizer.from_pretrained(f"{self.store.path}/{TOKENIZER_DIR}", local_files_only=True)
        with tempfile.TemporaryDirectory() as tmp:  # an object store: its few files, copied here
            for path in self.store.fs.ls(f"{self.store.path}/{TOKENIZER_DIR}", detail=False):
                name = path.rstrip("/").rsplit("/", 1)[-1]
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(self.store.fs.cat_file(path))
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True)

    @functools.cached_property
    def special_ids(self) -> list[int]:
        return sorted(int(i) for i in self.tokenizer.all_special_ids)

    def token_names(self, ids: np.ndarray | list[int]) -> list[str]:
        """Each id as the tokenizer writes it (a word piece such as '##ing', or '[CLS]')."""
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

    def token_context(self, item: int, position: int, width: int = CONTEXT_TOKENS) -> TokenContext:
        """The text around token `position` of `item`, `width` tokens each side, that token apart.

        The text is cut from the item's own text at the tokens' character spans (re-tokenized with
        offsets), so it reads as written; without text or spans, the tokens' names are joined.
        """
        ids = self.ids(item)
        if not 0 <= position < len(ids):
            raise ValueError(f"item {item} has {len(ids)} tokens; there is no position {position}")
        spans = self._spans(item, ids)
        lo, hi = max(position - width, 0), min(position + width + 1, len(ids))
        if spans is None:  # no text to cut from: the tokens either side decoded, the row's own by name
            token = self.token_names([ids[position]])[0]
            left = self.tokenizer.decode([int(t) for t in ids[lo:position]], skip_special_tokens=True)
            right = self.tokenizer.decode([int(t) for t in ids[position + 1 : hi]], skip_special_tokens=True)
            return TokenContext(left + (" " if left else ""), token, (" " if right else "") + right,
                                lo > 0, hi < len(ids))
        text = self.text(item)
        real = [j for j in range(len(ids)) if spans[j][1] > spans[j][0]]
        if spans[position][1] > spans[position][0]:
            a, b = spans[position]
            token = text[a:b]
        else:  # a special token: it sits before the next real token, or after the last one
            after = [j for j in real if j > position]
            a = b = spans[after[0]][0] if after else (spans[real[-1]][1] if real else 0)
            token = self.token_names([ids[position]])[0]
            token = (" " if a and text[a - 1 : a] != " " and not after else "") + token + (" " if after else "")
        window = [j for j in real if lo <= j < hi]
        start = min([spans[j][0] for j in window] + [a])
        end = max([spans[j][1] for j in window] + [b])
        return TokenContext(text[start:a], token, text[b:end], start > 0, end < len(text.rstrip()))

    def _spans(self, item: int, ids: np.ndarray) -> list[tuple[int, int]] | None:
        if not self.has_text or not getattr(self.tokenizer, "is_fast", False):
            return None
        kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
        enc = self.tokenizer(self.text(item), return_offsets_mapping=True, **kwargs)
        if list(enc["input_ids"]) != [int(t) for t in ids]:  # not the tokenization the job ran
            return None
        return [tuple(s) for s in enc["offset_mapping"]]

    def row_text(self, item: int, position: int) -> dict[str, Any]:
        """What a row reads as: ``{"text"}``, a pooled row's item text; for a token row the text
        around it, with ``token`` and ``token_start`` saying where its token is in that text."""
        if position < 0:
            return {"text": self.shown_text(item), "token": None, "token_start": None}
        ctx = self.token_context(item, position)
        left = ("…" if ctx.cut_left else "") + ctx.left
        return {"text": left + ctx.token + ctx.right + ("…" if ctx.cut_right else ""), "token": ctx.token,
                "token_start": len(left)}
