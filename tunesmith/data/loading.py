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


def read_text(
    path: str | os.PathLike, encoding: str | None = None, *, option: str | None = "encoding="
) -> str:
    """The text of ``path``: UTF-8 (with or without BOM) by default, or the given ``encoding``.

    ``option`` is how the caller's user names the encoding (``encoding=`` for the Python API, ``--set
    data.encoding=`` for a run config); None where there is no such option (then only conversion helps).
    """
    path = Path(path)
    raw = path.read_bytes()
    if encoding:
        return _decode_as(raw, encoding, path, option or "encoding=")
    if raw.startswith(b"\xff\xfe") or raw.startswith(b"\xfe\xff"):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise TunesmithError(_not_utf8(raw, err, path, option)) from None


def _decode_as(raw: bytes, encoding: str, path: Path, option: str) -> str:
    """``raw`` decoded as the encoding the user named."""
    try:
        return raw.decode(encoding)
    except LookupError:
        raise TunesmithError(
            f"{option}'{encoding}' is not an encoding Python knows (reading {path}). Use a name such as "
            f"utf-8, gb18030, big5, shift_jis or cp1252 ({option}'gb18030')."
        ) from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TunesmithError(
            f"{path} is not valid {encoding}: byte {err.start} (line {line}) cannot be decoded. Check the "
            f"file's encoding and pass the right one with {option}'...', or convert the file to UTF-8."
        ) from None


def _not_utf8(raw: bytes, err: UnicodeDecodeError, path: Path, option: str | None) -> str:
    """The message for a file that is not UTF-8: its likely encoding and how to read it, or that it is
    binary."""
    line = raw[: err.start].count(b"\n") + 1
    where = f"{path} is not UTF-8: byte {err.start} (line {line}) is 0x{raw[err.start]:02x}"
    if b"\x00" in raw[:4096]:
        return (
            f"{where}, and it holds NUL bytes, so it is a binary file, not text. Pass a JSON, JSONL, CSV, "
            "TSV or Parquet file (the name's extension must match its contents)."
        )
    guess = _guess_encoding(raw)
    if guess is None:
        return f"{where}; its encoding is unknown. Convert it to UTF-8" + (
            f" or pass {option}'...' with its encoding." if option else "."
        )
    codec, label = guess
    convert = f"convert it to UTF-8 with `iconv -f {codec} -t utf-8 {path} > utf8-{path.name}`"
    fix = f"pass {option}'{codec}', or {convert}" if option else convert
    return f"{where}; it looks like {label}. To read it, {fix}."


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


def load_dataset_file(
    source, *, encoding: str | None = None, split: str = "train", encoding_option: str = "encoding="
):
    """Load ``source`` (a path, a ``Dataset``/``DatasetDict`` or a list of dicts) as a ``Dataset``.

    ``encoding_option`` names the encoding setting in errors (see ``read_text``).
    """
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
        return _read_parquet(path)
    text = read_text(path, encoding, option=encoding_option)
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


def _read_parquet(path: Path):
    """A Parquet file as a ``Dataset``; a file that is not Parquet gets a clear error."""
    import datasets

    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PAR1":
        raise TunesmithError(
            f"{path} is not a Parquet file (it does not start with the bytes PAR1). Pass a Parquet file, or "
            "rename the file to the extension that matches its contents (.jsonl, .json, .csv)."
        )
    try:
        return datasets.Dataset.from_parquet(str(path))
    except Exception as err:  # pyarrow.ArrowInvalid and friends: a truncated or damaged file
        raise TunesmithError(
            f"{path} cannot be read as Parquet ({' '.join(str(err).split())[:200]}). It may be truncated; "
            "write it again."
        ) from None


def _shape_error(rows: list[dict], path: Path) -> str | None:
    """Name the first row and field whose type differs from the type the field has in the other rows.

    The expected type is text where any row holds text there (training fields are text), else the most
    common type, so a wrong first row is blamed, not the rows after it.
    """
    types: dict[str, list[type]] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                types.setdefault(key, []).append(type(value))
    for number, row in enumerate(rows, start=1):
        for key, value in row.items():
            seen = types[key] if value is not None else []
            expected = str if str in seen else max(set(seen), key=seen.count, default=None)
            if value is not None and type(value) is not expected:
                return (
                    f"{path}, row {number}, field '{key}' is a {type(value).__name__} ({str(value)[:60]!r}), "
                    f"but other rows hold a {expected.__name__} there. Give the field the same type in every "
                    "row (quote numbers as text)."
                )
    return None
