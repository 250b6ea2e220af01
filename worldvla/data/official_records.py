"""Read the official pretokenized data: `record.json` lists of {file, len, id} pointing to pickles.

Each official pickle holds a plain dict {"token": [int], "label": [int], "id": int}
(official_format.md §3.3). Pickles can run code when loaded, so they are read with an Unpickler
that resolves no global at all: plain dicts, lists, ints and strings need none, anything else
(numpy arrays, tensors, arbitrary classes) is refused with the file named.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from worldvla import vocab as V
from worldvla.data.sequence import Sample
from worldvla.spans import SpanError, spans_from_ids


class UnsafePickleError(pickle.UnpicklingError):
    pass


class PlainUnpickler(pickle.Unpickler):
    """Loads only built-in containers and scalars; every global lookup is refused."""

    def __init__(self, file, where: str = ""):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"{self.where}: refusing to load {module}.{name}; only plain lists/dicts/ints/strings "
                                "are accepted in pretokenized pickles")


def load_plain_pickle(path: str | Path) -> object:
    path = Path(path)
    data = path.read_bytes()
    return PlainUnpickler(io.BytesIO(data), str(path)).load()


def _item_sample(item: dict, where: str) -> Sample:
    try:
        tokens, labels = item["token"], item["label"]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: expected a dict with 'token' and 'label'") from None
    if len(tokens) != len(labels):
        raise ValueError(f"{where}: {len(tokens)} tokens but {len(labels)} labels")
    tokens, labels = [int(t) for t in tokens], [int(t) for t in labels]
    try:
        spans = spans_from_ids(tokens)
    except SpanError as err:
        raise ValueError(f"{where}: {err}") from None
    return Sample(tokens, labels, spans)


class OfficialRecords:
    """The official record list; `sample(i)` loads item i (inline token/label, or its pickle)."""

    def __init__(self, path: str | Path, root: str | Path | None = None):
        self.path = Path(path)
        try:
            items = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.path}: cannot read record list ({err})") from None
        if not isinstance(items, list):
            raise ValueError(f"{self.path}: expected a JSON list of {{file, len, id}} records")  # noqa: TRY004 - callers catch ValueError
        self.items = items
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [int(it.get("len", len(it.get("token", [])))) for it in self.items]

    def _resolve(self, file: str) -> Path:
        p = Path(file)
        for cand in ([p] if p.is_absolute() else [self.root / p] if self.root else []) + [p, self.path.parent / p]:
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{self.path}: pickle {file} not found (also looked next to the record list)")

    def sample(self, i: int) -> Sample:
        item = self.items[i]
        where = f"{self.path}[{i}]"
        if "token" not in item:
            if "file" not in item:
                raise ValueError(f"{where}: record has neither 'token' nor 'file'")
            path = self._resolve(item["file"])
            item = load_plain_pickle(path)
            where = f"{path} (from {self.path}[{i}])"
        return _item_sample(item, where)

    def kind(self, i: int) -> str:
        return self.sample(i).kind  # decided when the Sample is made: an image among its targets
