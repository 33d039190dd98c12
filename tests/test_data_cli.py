"""Tests of ``memla data check / show / convert / list``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memla.cli import main
from memla.cli._common import console
from memla.data import load_dataset, read_raw

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GOOD = FIXTURES / "good.json"
BAD = FIXTURES / "bad.json"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(console, "width", 200)  # rich tables: keep messages on one line


def run(capsys, *argv):
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_good_file(capsys):
    code, out, _ = run(capsys, "check", GOOD)
    assert code == 0
    for text in ("records", "3: en zh fr", "dev: 1, test: 2", "prompts per language", "paraphrase", "P36", "capital", "OK (3 warning(s))"):
        assert text in out
    assert "language missing in 1 of 3 records" in out


def test_check_bad_file_exits_2_and_lists_problems(capsys):
    code, out, err = run(capsys, "check", BAD)
    assert code == 2
    assert "12 error(s)" in out
    for text in ("missing key", "no {} subject slot", "equals target_true", "unknown language code 'xx'", "duplicate id 9"):
        assert text in out
    assert "Traceback" not in out + err


def test_check_limits_listed_problems_but_counts_all(capsys):
    code, out, _ = run(capsys, "check", BAD, "--max-problems", "2")
    assert code == 2
    assert "10 more problem(s) not listed (--max-problems); all 12 by kind" in out
    assert "duplicate-id" in out


def test_check_bad_file_in_a_subprocess_has_no_traceback():
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "memla", "data", "check", str(BAD)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "12 error(s)" in proc.stdout


def test_check_non_utf8_file_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad-bytes.json"
    path.write_bytes(b'[{"example_id": 1, "relation": "caf\xe9"}]')
    code, out, err = run(capsys, "check", path)
    assert code == 2
    assert "not valid UTF-8" in err and str(path) in err
    assert "Traceback" not in err


def test_check_missing_file_exits_2(capsys):
    code, _, err = run(capsys, "check", "does-not-exist.json")
    assert code == 2 and "no dataset file or built-in dataset" in err


def test_show_prints_one_record(capsys):
    code, out, _ = run(capsys, "show", GOOD, "--record", "1", "--lang", "zh")
    assert code == 0
    assert "record 1" in out and "capital" in out and "split dev" in out
    assert "肯尼亚的首都是蒙巴萨" in out and "肯尼亚的首都是内罗毕" in out  # joined without a space
    assert "乌干达的首都是 → 坎帕拉" in out
    assert "The capital of Kenya" not in out  # only the asked language


def test_show_all_languages_by_default_and_question_form(capsys):
    code, out, _ = run(capsys, "show", GOOD, "--record", "q-3")
    assert code == 0
    assert "question-form" in out and "Who wrote the novel Solaris?" in out and "(unknown)" in out


def test_show_json(capsys):
    code, out, _ = run(capsys, "show", GOOD, "--record", "2", "--json")
    assert code == 0
    assert json.loads(out)["edit"]["fr"]["target_true"] == "couronne"


def test_show_unknown_record_or_language_exits_2(capsys):
    code, _, err = run(capsys, "show", GOOD, "--record", "99")
    assert code == 2 and "no record with id '99'" in err and "1, 2, q-3" in err
    code, _, err = run(capsys, "show", GOOD, "--record", "2", "--lang", "ja")
    assert code == 2 and "has no edit in ja" in err
    code, _, err = run(capsys, "show", GOOD, "--record", "2", "--lang", "xx")
    assert code == 2 and "unknown language code" in err


def test_convert_writes_a_valid_dataset(tmp_path, capsys):
    out_path = tmp_path / "mz.jsonl"
    inputs = sorted((FIXTURES / "mzsre").glob("*.json"))
    code, out, _ = run(capsys, "convert", "--from", "mzsre", *inputs, "--out", out_path)
    assert code == 0
    assert "wrote 2 records (3 languages: en zh cs)" in out
    records = load_dataset(out_path)
    assert [r.example_id for r in records] == [0, 1]


def test_convert_with_errors_writes_nothing_unless_asked(tmp_path, capsys):
    items = json.loads((FIXTURES / "counterfact" / "counterfact.json").read_text(encoding="utf-8"))
    items[1]["requested_rewrite"]["target_new"]["str"] = "piano"  # equal to target_true
    src = tmp_path / "counterfact.json"
    src.write_text(json.dumps(items), encoding="utf-8")
    out_path = tmp_path / "out.json"
    code, out, _ = run(capsys, "convert", "--from", "counterfact", src, "--out", out_path)
    assert code == 2 and "nothing written" in out and "equals target_true" in out
    assert not out_path.exists()
    code, out, _ = run(capsys, "convert", "--from", "counterfact", src, "--out", out_path, "--drop-invalid")
    assert code == 0 and "dropped 1 invalid" in out
    assert [r.example_id for r in load_dataset(out_path)] == [0]


def test_convert_bad_input_exits_2(tmp_path, capsys):
    code, _, err = run(capsys, "convert", "--from", "mlake", tmp_path / "en_mcqa.json", "--out", tmp_path / "x.json")
    assert code == 2 and "multiple-choice" in err


def test_list_and_bare_data_command(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "built-in datasets" in out
    code, out, _ = run(capsys)
    assert code == 2 and "check" in out and "convert" in out


def test_help_texts(capsys):
    for action in ("check", "show", "convert"):
        with pytest.raises(SystemExit) as info:
            main(["data", action, "--help"])
        assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exits with status 2" in out.replace("\n", " ").lower() or "exit" in out
    assert "--record" in out and "--from" in out and "bmike53" in out


# ----------------------------------------------------------------------------- bad input, one clean line


def one_line_error(code, out, err):
    """The CLI refused with exit 2 and one error line, no traceback."""
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


MZSRE_IN = sorted((FIXTURES / "mzsre").glob("*.json"))


def test_convert_out_directory_is_refused_before_reading_the_inputs(tmp_path, capsys):
    line = one_line_error(*run(capsys, "convert", "--from", "mzsre", tmp_path / "missing.json", "--out", tmp_path))
    assert line.endswith(f"--out {tmp_path} is a directory; give a .json or .jsonl file path")


def test_convert_out_in_a_missing_folder_creates_it(tmp_path, capsys):
    out_path = tmp_path / "new" / "sub" / "mz.json"
    code, out, _ = run(capsys, "convert", "--from", "mzsre", *MZSRE_IN, "--out", out_path)
    assert code == 0 and "wrote 2 records" in out
    assert len(load_dataset(out_path)) == 2


def test_convert_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file.json").write_text("x", encoding="utf-8")
    line = one_line_error(*run(capsys, "convert", "--from", "mzsre", *MZSRE_IN, "--out", tmp_path / "file.json" / "x.json"))
    assert "cannot create the folder" in line and "file.json is a file" in line


def test_convert_out_existing_file_is_replaced_but_an_input_is_not(tmp_path, capsys):
    existing = tmp_path / "old.json"
    existing.write_text("[1]", encoding="utf-8")
    code, _, _ = run(capsys, "convert", "--from", "mzsre", *MZSRE_IN, "--out", existing)
    assert code == 0 and len(load_dataset(existing)) == 2
    source = tmp_path / "counterfact.json"
    source.write_bytes((FIXTURES / "counterfact" / "counterfact.json").read_bytes())
    before = source.read_bytes()
    line = one_line_error(*run(capsys, "convert", "--from", "counterfact", source, "--out", source))
    assert line.endswith(f"--out {source} is also an input file; write the converted records to another file")
    assert source.read_bytes() == before


def test_convert_mkeb_file_with_from_bmike53_names_the_layouts(tmp_path, capsys):
    raw, _ = read_raw("mkeb-mini")
    path = tmp_path / "mkeb.json"
    path.write_text(json.dumps(raw[:3], ensure_ascii=False), encoding="utf-8")
    line = one_line_error(*run(capsys, "convert", "--from", "bmike53", path, "--out", tmp_path / "x.json"))
    assert f"{path} does not look like BMIKE-53: expected a list of objects language -> entry" in line
    assert "found keys example_id, relation" in line and line.endswith("(this looks like the MKEB layout: read it without --from)")
    assert not (tmp_path / "x.json").exists()


def test_check_deeply_nested_json_and_jsonl(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep, encoding="utf-8")
    (tmp_path / "deep.jsonl").write_text('{"example_id": 1}\n' + deep + "\n", encoding="utf-8")
    line = one_line_error(*run(capsys, "check", tmp_path / "deep.json"))
    assert f"{tmp_path / 'deep.json'}: JSON nested too deeply" in line
    line = one_line_error(*run(capsys, "check", tmp_path / "deep.jsonl"))
    assert f"{tmp_path / 'deep.jsonl'}: line 2: JSON nested too deeply" in line


def test_check_reports_a_too_long_prompt_and_max_chars_changes_the_limit(tmp_path, capsys):
    raw = json.loads(GOOD.read_text(encoding="utf-8"))
    raw[0]["edit"]["en"]["prompt"] = "x" * 99_998 + "{}"
    path = tmp_path / "long.json"
    path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    code, out, _ = run(capsys, "check", path)
    assert code == 2 and "100000 characters, more than the limit of 2000 (MAX_TEXT_CHARS)" in out
    code, out, _ = run(capsys, "check", path, "--max-chars", "100000")
    assert code == 0 and "OK" in out
    code, out, _ = run(capsys, "check", "mkeb-mini", "--max-chars", "131")
    assert code == 2 and "132 characters, more than the limit of 131 (set for this check)" in out


@pytest.mark.parametrize("argv", [["--max-chars", "0"], ["--max-chars", "many"], ["--max-problems", "-1"]])
def test_check_rejects_bad_limits(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "check", str(GOOD), *argv])
    assert info.value.code == 2
    assert f"argument {argv[0]}:" in capsys.readouterr().err


def test_check_help_documents_max_chars(capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-chars N" in out and "longer than N characters" in out and "MAX_TEXT_CHARS" in out


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.json", b"", "the file is empty; expected a JSON list of records"),
        ("nothing.json", b"[]", "no records (the list is empty)"),
        ("object.json", b'{"a": 1}', "expected a JSON list of records"),
        ("utf16.json", '[{"a": 1}]'.encode("utf-16"), "not valid UTF-8: the file is UTF-16"),
        ("junk.json", bytes(range(128, 256)) * 4, "not valid UTF-8 (byte 0, line 1)"),
        ("bigint.json", b'[{"example_id": ' + b"9" * 5000 + b"}]", "a JSON number too long to read"),
    ],
)
def test_check_show_and_convert_bad_files_give_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    for argv in (["check", path], ["show", path, "--record", "1"], ["convert", "--from", "counterfact", path, "--out", tmp_path / "o.json"]):
        line = one_line_error(*run(capsys, *argv))
        assert f"{path}: {message}" in line


def test_check_a_directory_gives_one_line(tmp_path, capsys):
    line = one_line_error(*run(capsys, "check", tmp_path))
    assert line.endswith(f"{tmp_path} is a directory; give a .json or .jsonl dataset file or a built-in dataset name")


def test_check_a_record_that_is_a_string(tmp_path, capsys):
    path = tmp_path / "strings.json"
    path.write_text('["hello"]', encoding="utf-8")
    code, out, err = run(capsys, "check", path)
    assert code == 2 and "a record must be a JSON object, got a string" in out and "Traceback" not in out + err
