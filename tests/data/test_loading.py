"""Reading data files: formats, encodings, and the errors a user sees for broken files."""

from __future__ import annotations

import json

import datasets
import pytest

from tunesmith.data import load_dataset_file
from tunesmith.errors import TunesmithError


def test_every_format_reads_the_same_rows(tmp_path, write_jsonl, alpaca_rows):
    jsonl = write_jsonl(alpaca_rows)
    (tmp_path / "list.json").write_text(json.dumps(alpaca_rows), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": alpaca_rows}), encoding="utf-8")
    csv_text = "instruction,input,output\n" + "".join(
        f'"{r["instruction"]}","","{r["output"]}"\n' for r in alpaca_rows
    )
    (tmp_path / "rows.csv").write_text(csv_text, encoding="utf-8")
    datasets.Dataset.from_list(alpaca_rows).to_parquet(str(tmp_path / "rows.parquet"))
    sources = [
        jsonl,
        tmp_path / "list.json",
        tmp_path / "wrapped.json",
        tmp_path / "rows.csv",
        tmp_path / "rows.parquet",
        datasets.Dataset.from_list(alpaca_rows),
        datasets.DatasetDict({"train": datasets.Dataset.from_list(alpaca_rows)}),
        alpaca_rows,
    ]
    for source in sources:
        assert load_dataset_file(source).to_list() == alpaca_rows, source


def test_utf8_with_bom_reads_cleanly(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("instruction,output\n发烧怎么办,多喝水\n".encode("utf-8-sig"))
    data = load_dataset_file(path)
    assert data.column_names == ["instruction", "output"]  # no "\ufeffinstruction"
    assert data[0]["instruction"] == "发烧怎么办"


def test_gb18030_file_gets_a_message_naming_the_encoding_and_reads_with_it(shared_dir):
    path = shared_dir / "data" / "medical_dialogue_zh_raw.gb18030.csv"
    with pytest.raises(TunesmithError) as err:
        load_dataset_file(path)
    message = str(err.value)
    assert "not UTF-8" in message and "GB18030" in message and "encoding='gb18030'" in message
    assert str(path) in message
    data = load_dataset_file(path, encoding="gb18030")
    assert data.column_names == ["department", "title", "ask", "answer"]
    assert len(data) == 7644
    assert "高血压" in data[0]["title"]


def test_malformed_json_line_is_named(tmp_path, alpaca_rows):
    path = tmp_path / "broken.jsonl"
    good = json.dumps(alpaca_rows[0])
    path.write_text(f'{good}\n{good}\n{{"instruction": "x", "output": }}\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"broken.jsonl, line 3 is not valid JSON"):
        load_dataset_file(path)


def test_json_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "list_line.jsonl"
    path.write_text('{"text": "a"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"line 2 is a JSON list"):
        load_dataset_file(path)


def test_empty_file_and_missing_file_and_unknown_suffix(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match="holds no rows"):
        load_dataset_file(empty)
    with pytest.raises(TunesmithError, match="does not exist"):
        load_dataset_file(tmp_path / "nope.jsonl")
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(TunesmithError, match="cannot read '.xlsx'"):
        load_dataset_file(odd)


def test_csv_row_with_wrong_field_count_names_its_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"line 3 has 3 fields but the header has 2"):
        load_dataset_file(path)


def test_rows_of_different_shapes_are_refused(tmp_path, write_jsonl):
    path = write_jsonl([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": ["b"]}])
    with pytest.raises(TunesmithError, match="row 2, field .output. is a list .*other rows hold a str"):
        load_dataset_file(path)
