"""Tests of memla.data loading and saving: round trips, JSONL, splits, built-in lookup, files left untouched."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from memla.data import DataError, EditFact, Record, builtin_datasets, load_dataset, save_dataset
from memla.data import io as data_io
from memla.data.schema import RecordCheck

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GOOD = FIXTURES / "good.json"
GOOD_JSONL = FIXTURES / "good.jsonl"


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_load_checks_each_record_once(monkeypatch):
    seen = []
    real = RecordCheck.record
    monkeypatch.setattr(RecordCheck, "record", lambda self, raw, rid: seen.append(rid) or real(self, raw, rid))
    records = load_dataset(GOOD)
    assert seen == [r.example_id for r in records]


def test_load_builds_records():
    records = load_dataset(GOOD)
    assert [r.example_id for r in records] == [1, 2, "q-3"]
    first = records[0]
    assert first.langs == ("en", "zh", "fr")
    assert first.edit["zh"] == EditFact("{}的首都是", "肯尼亚", "蒙巴萨", "内罗毕")
    assert first.edit["zh"].filled() == "肯尼亚的首都是"
    assert first.neighborhood_answers["fr"] == ["Kampala"]
    assert first.multi_hop_new_answer == {"en": "Mombasa", "zh": "蒙巴萨"}
    assert first.split == "dev" and first.templated is True
    last = records[2]
    assert last.templated is False and last.edit["en"].subject is None and last.edit["en"].target_true is None
    assert last.extra == {"source_note": "kept as extra"}


def test_json_and_jsonl_give_the_same_records():
    assert load_dataset(GOOD) == load_dataset(GOOD_JSONL)


def test_to_dict_reproduces_the_official_layout():
    raw = json.loads(GOOD.read_text(encoding="utf-8"))
    assert [r.to_dict() for r in load_dataset(GOOD)] == raw


def test_to_dict_writes_our_keys_only_when_set():
    record = Record(1, "P36", "capital", {"en": EditFact("The capital of {} is", "Peru", "Cusco", "Lima")})
    out = record.to_dict()
    assert "split" not in out and "templated" not in out and "multi_hop_questions" not in out
    assert list(out)[:4] == ["example_id", "relation", "relation_description", "edit"]
    record.split, record.templated = "test", False
    out = record.to_dict()
    assert out["split"] == "test" and out["templated"] is False


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_round_trip_save_load(tmp_path, suffix):
    records = load_dataset(GOOD)
    out = save_dataset(records, tmp_path / f"copy{suffix}")
    assert out == tmp_path / f"copy{suffix}"
    assert load_dataset(out) == records
    text = out.read_text(encoding="utf-8")
    assert "肯尼亚" in text  # written as UTF-8, not \u escapes
    if suffix == ".jsonl":
        assert len(text.splitlines()) == len(records)
    else:
        assert isinstance(json.loads(text), list)


def test_save_accepts_raw_dicts(tmp_path):
    raw = json.loads(GOOD.read_text(encoding="utf-8"))
    assert load_dataset(save_dataset(raw, tmp_path / "raw.json")) == load_dataset(GOOD)


def test_save_load_save_is_byte_stable(tmp_path):
    first = save_dataset(load_dataset(GOOD), tmp_path / "a.json").read_bytes()
    second = save_dataset(load_dataset(tmp_path / "a.json"), tmp_path / "b.json").read_bytes()
    assert first == second


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "data.json"
    save_dataset(load_dataset(GOOD), target)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(data_io.os, "replace", boom)
    with pytest.raises(DataError, match=r"data\.json: cannot write: disk full"):
        save_dataset(load_dataset(GOOD)[:1], target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_saved_file_is_world_readable(tmp_path):
    path = save_dataset(load_dataset(GOOD), tmp_path / "x.json")
    assert path.stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize("name", ["good.json", "good.jsonl", "bad.json"])
def test_loading_never_modifies_the_file(tmp_path, name):
    path = tmp_path / name
    shutil.copy2(FIXTURES / name, path)
    os.chmod(path, 0o444)  # a read-only file loads too
    before = fingerprint(path)
    try:
        load_dataset(path)
    except DataError:
        assert name == "bad.json"
    assert fingerprint(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_split_selection():
    assert [r.example_id for r in load_dataset(GOOD, split="dev")] == [1]
    assert [r.example_id for r in load_dataset(GOOD, split="test")] == [2, "q-3"]
    with pytest.raises(DataError, match="splits present: dev, test"):
        load_dataset(GOOD, split="train")


def test_format_option(tmp_path):
    odd = tmp_path / "records.txt"
    odd.write_bytes(GOOD_JSONL.read_bytes())
    assert load_dataset(odd, format="jsonl") == load_dataset(GOOD)
    assert load_dataset(odd) == load_dataset(GOOD)  # auto: JSON fails, lines of objects -> JSONL
    with pytest.raises(DataError, match="unknown dataset format"):
        load_dataset(GOOD, format="yaml")


def test_jsonl_error_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = GOOD_JSONL.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:-1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: invalid JSON on line 2"):
        load_dataset(path)


def test_missing_file_or_name_lists_builtins():
    with pytest.raises(DataError, match="no dataset file or built-in dataset named 'no-such-set'"):
        load_dataset("no-such-set")


def test_builtin_lookup_by_name(tmp_path, monkeypatch):
    (tmp_path / "tiny.json").write_bytes(GOOD.read_bytes())
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part1.json").write_text("[]", encoding="utf-8")
    (tmp_path / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.setattr(data_io.resources, "files", lambda package: tmp_path)
    assert builtin_datasets() == ["tiny"]
    assert load_dataset("tiny") == load_dataset(GOOD)
    assert load_dataset("tiny.json") == load_dataset(GOOD)
    with pytest.raises(DataError, match=r"built-in: tiny"):
        load_dataset("huge")


def test_builtin_datasets_lists_shipped_json_files():
    names = builtin_datasets()
    assert all(isinstance(n, str) and not n.endswith(".json") for n in names)
    assert "__init__" not in names


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.json", b"", r"empty\.json: the file is empty; expected a JSON list of records"),
        ("blank.jsonl", b"\n  \n", r"blank\.jsonl: the file is empty"),
        ("nothing.json", b"[]", r"nothing\.json: no records \(the list is empty\)"),
        ("object.json", b'{"a": 1}', r"object\.json: expected a JSON list of records \(or JSONL\), got an object$"),
        ("one.json", b'{"example_id": 1, "edit": {}}', r"got an object \(one record\? put it in a list: \[ \.\.\. \]\)"),
        ("number.json", b"7", r"got a number"),
        ("utf16.json", "[]".encode("utf-16"), r"utf16\.json: not valid UTF-8: the file is UTF-16 .*save it as UTF-8"),
        ("bigint.json", b'[{"example_id": ' + b"1" * 5000 + b"}]", r"bigint\.json: a JSON number too long to read \(more than \d+ digits\)"),
    ],
)
def test_bad_dataset_files_are_one_line_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(path)
    assert "\n" not in str(info.value)


def test_deeply_nested_json_is_a_data_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match=r"deep\.json: JSON nested too deeply \(more than about \d+ levels"):
        load_dataset(path)


def test_deeply_nested_jsonl_line_is_a_data_error_naming_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"example_id": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep\.jsonl: line 2: JSON nested too deeply"):
        load_dataset(path)
    with pytest.raises(DataError, match=r"deep\.jsonl: line 2: JSON nested too deeply"):
        load_dataset(path, format="jsonl")


def test_a_directory_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match=r"is a directory; give a \.json or \.jsonl dataset file or a built-in dataset name"):
        load_dataset(tmp_path)


def test_save_into_a_directory_or_under_a_file_is_a_data_error(tmp_path):
    records = load_dataset(GOOD)
    with pytest.raises(DataError, match=r"is a directory; give a \.json or \.jsonl file path"):
        save_dataset(records, tmp_path)
    (tmp_path / "file.json").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot create the folder .*file\.json is a file"):
        save_dataset(records, tmp_path / "file.json" / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


def test_save_creates_missing_folders_and_replaces_an_existing_file(tmp_path):
    records = load_dataset(GOOD)
    path = save_dataset(records, tmp_path / "a" / "b" / "out.json")
    assert load_dataset(path) == records
    save_dataset(records[:1], path)
    assert load_dataset(path) == records[:1]


def test_check_output_path_refuses_an_input_file(tmp_path):
    source = tmp_path / "in.json"
    source.write_bytes(GOOD.read_bytes())
    with pytest.raises(DataError, match=r"--out in\.json is also an input file"):
        data_io.check_output_path(tmp_path / "." / "in.json", name="--out in.json", inputs=[source])
    assert data_io.check_output_path(tmp_path / "new.json", inputs=[source]) == tmp_path / "new.json"
