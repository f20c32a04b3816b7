"""Read training data from JSON, JSON Lines, CSV/TSV, Parquet files or Hugging Face ``datasets`` objects.

Text files must be UTF-8 (a byte-order mark is fine) unless ``encoding=`` says otherwise; a file in another
encoding gets a message naming the likely encoding and the argument to pass. A malformed JSON line is
reported with its line number.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from tunesmith.errors import TunesmithError

__all__ = ["load_dataset_file", "read_text", "SUFFIXES"]

SUFFIXES = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Tried in order to name a non-UTF-8 file's encoding in the error message.
_GUESSES = (
    ("gb18030", "GB18030 (Chinese)"),
    ("big5", "Big5 (Traditional Chinese)"),
    ("shift_jis", "Shift-JIS (Japanese)"),
    ("euc_kr", "EUC-KR (Korean)"),
    ("cp1252", "Windows-1252 (Western)"),
)


def _guess_encoding(raw: bytes) -> tuple[str, str] | None:
    for codec, label in _GUESSES:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if codec != "cp1252" and not any(
            "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" for ch in text[:4000]
        ):
            continue  # decodes, but holds no East Asian text: not this one
        return codec, label
    return None


def read_text(path: str | os.PathLike, encoding: str | None = None) -> str:
    """The text of ``path``: UTF-8 (with or without BOM) by default, or the given ``encoding``."""
    path = Path(path)
    raw = path.read_bytes()
    if encoding:
        try:
            return raw.decode(encoding)
        except LookupError:
            raise TunesmithError(
                f"encoding='{encoding}' is not an encoding Python knows (reading {path})."
            ) from None
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise TunesmithError(
                f"{path} is not valid {encoding}: byte {err.start} (line {line}) "
                "cannot be decoded. Check the file's encoding and pass the right encoding=."
            ) from None
    if raw.startswith(b"\xff\xfe") or raw.startswith(b"\xfe\xff"):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        guess = _guess_encoding(raw)
        what = f"it looks like {guess[1]}" if guess else "its encoding is unknown"
        fix = (
            f"pass encoding='{guess[0]}' (e.g. load_dataset_file(path, encoding='{guess[0]}')), or "
            f"convert it to UTF-8 with `iconv -f {guess[0]} -t utf-8`"
        )
        raise TunesmithError(
            f"{path} is not UTF-8: byte {err.start} (line {line}) is 0x{raw[err.start]:02x}; {what}. "
            + (f"To read it, {fix}." if guess else "Convert it to UTF-8 or pass encoding='...'.")
        ) from None


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TunesmithError(
                f"{path}, line {number} is not valid JSON ({err.msg} at column {err.colno}): "
                f"{line[:80]!r}. Fix or delete that line; each line must be one JSON object."
            ) from None
        if not isinstance(row, dict):
            raise TunesmithError(
                f"{path}, line {number} is a JSON {type(row).__name__}, not an object like "
                '{"instruction": ..., "output": ...}. Each line must be one JSON object.'
            )
        rows.append(row)
    return rows


def _parse_json(text: str, path: Path) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line in a .json file
            return _parse_jsonl(text, path)
        raise TunesmithError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}. Fix the file "
            "(a list of objects, or one object per line)."
        ) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
            data = lists[0]  # {"data": [...]} / {"train": [...]}
        elif data and all(isinstance(v, list) for v in data.values()):
            keys = list(data)
            data = [dict(zip(keys, values, strict=False)) for values in zip(*data.values(), strict=False)]
        else:
            data = [data]
    if not isinstance(data, list):
        raise TunesmithError(f"{path} holds a JSON {type(data).__name__}; expected a list of objects.")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise TunesmithError(f"{path}, row {number} is a JSON {type(row).__name__}, not an object.")
    return data


def _parse_csv(text: str, path: Path, delimiter: str) -> list[dict]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    header = [h.strip() for h in header]
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TunesmithError(
                f"{path}, line {reader.line_num} has {len(row)} fields but the header has {len(header)} "
                f"({', '.join(header)}). Quote fields that contain '{delimiter}' or line breaks."
            )
        rows.append(dict(zip(header, row, strict=True)))
    return rows


def load_dataset_file(source, *, encoding: str | None = None, split: str = "train"):
    """Load ``source`` (a path, a ``Dataset``/``DatasetDict`` or a list of dicts) as a ``Dataset``."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise TunesmithError(
                f"The DatasetDict has no '{split}' split (it has: {', '.join(source)}). Pass split=."
            )
        return source[split]
    if isinstance(source, list):
        return datasets.Dataset.from_list(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise TunesmithError(f"Data file {path} does not exist (or is not a file). Check the path.")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TunesmithError(
            f"tunesmith cannot read '{path.suffix}' files ({path}). Use one of: "
            f"{', '.join(sorted(SUFFIXES))}."
        )
    if kind == "parquet":
        return datasets.Dataset.from_parquet(str(path))
    text = read_text(path, encoding)
    if kind == "jsonl":
        rows = _parse_jsonl(text, path)
    elif kind == "json":
        rows = _parse_json(text, path)
    else:
        rows = _parse_csv(text, path, "\t" if kind == "tsv" else ",")
    if not rows:
        raise TunesmithError(f"{path} holds no rows. Add training examples to it.")
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as err:  # pyarrow type clash between rows
        raise TunesmithError(
            _shape_error(rows, path)
            or (
                f"{path}: the rows do not share one shape ({err}). Make every row have the same fields with "
                "the same types."
            )
        ) from None


def _shape_error(rows: list[dict], path: Path) -> str | None:
    """Name the first row and field whose type differs from the same field in earlier rows."""
    first: dict[str, type] = {}
    for number, row in enumerate(rows, start=1):
        for key, value in row.items():
            if value is None:
                continue
            seen = first.setdefault(key, type(value))
            if type(value) is not seen:
                return (
                    f"{path}, row {number}, field '{key}' is a {type(value).__name__} ({str(value)[:60]!r}), "
                    f"but earlier rows hold a {seen.__name__} there. Give the field the same type in every "
                    "row (quote numbers as text)."
                )
    return None
