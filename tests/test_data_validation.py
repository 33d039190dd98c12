"""Tests of memla.data validation: every error and warning, on a hand-made bad file and on small records."""

import copy
import json
from pathlib import Path

import pytest

from memla.data import MAX_TEXT_CHARS, DataError, Record, load_dataset, read_raw, validate

FIXTURES = Path(__file__).parent / "fixtures" / "data"
BAD = FIXTURES / "bad.json"


def good_record(example_id=1):
    return {
        "example_id": example_id,
        "relation": "P36",
        "relation_description": "capital",
        "edit": {
            "en": {"prompt": "The capital of {} is", "subject": "Peru", "target_new": "Cusco", "target_true": "Lima"},
            "zh": {"prompt": "{}的首都是", "subject": "秘鲁", "target_new": "库斯科", "target_true": "利马"},
        },
        "paraphrase_prompts": {"en": ["Peru's capital city is"], "zh": ["秘鲁的首都城市是"]},
        "neighborhood_prompts": {"en": ["The capital of Chile is"], "zh": ["智利的首都是"]},
        "neighborhood_answers": {"en": ["Santiago"], "zh": ["圣地亚哥"]},
        "multi_hop_questions": {"en": ["What is the capital of the country where Machu Picchu is?"]},
        "multi_hop_new_answer": {"en": "Cusco"},
    }


def codes(problems):
    return {(p.code, p.record_id, p.lang, p.field) for p in problems}


def test_a_good_record_has_no_problem():
    report = validate([good_record(1), good_record(2)])
    assert report.ok
    assert report.errors == [] and report.warnings == []


def test_bad_file_reports_every_error_with_record_language_and_field():
    raw, label = read_raw(BAD)
    report = validate(raw, source=label)
    found = codes(report.errors)
    expected = {
        ("missing-key", 1, None, "paraphrase_prompts"),
        ("missing-key", 2, "en", "edit.target_true"),
        ("no-slot", 3, "en", "edit.prompt"),
        ("many-slots", 4, "en", "edit.prompt"),
        ("empty", 5, "en", "edit.subject"),
        ("empty", 6, "en", "edit.target_new"),
        ("same-targets", 7, "en", "edit.target_new"),
        ("unknown-lang", 8, "xx", "edit"),
        ("length-mismatch", 9, "en", "neighborhood_answers"),
        ("duplicate-id", 9, None, "example_id"),
        ("bad-type", 11, "en", "paraphrase_prompts"),
        ("missing-key", 12, "en", "multi_hop_new_answer"),
    }
    assert expected <= found
    assert len(report.errors) == len(expected)
    assert all(p.source == str(BAD) and p.severity == "error" for p in report.errors)


def test_problem_str_names_file_record_language_and_field():
    raw, label = read_raw(BAD)
    problem = next(p for p in validate(raw, source=label).errors if p.code == "no-slot")
    text = str(problem)
    assert text.startswith("error: ")
    for part in (str(BAD), "record 3", "[en]", "edit.prompt", "{}"):
        assert part in text


def test_loading_the_bad_file_raises_a_data_error_naming_the_problems():
    with pytest.raises(DataError) as info:
        load_dataset(BAD)
    message = str(info.value)
    assert "\n" not in message  # one line: the first error, the count of the others, and where to see them
    assert message.startswith(f"{BAD} record 1 paraphrase_prompts: missing key")
    assert "(and 11 more error(s); `memla data check" in message


def test_non_utf8_file_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps([good_record()], indent=1).encode("utf-8").replace(b"Peru's", b"Per\xfa's"))
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(path) in message and "UTF-8" in message and "line" in message


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"example_id": 1,\n  "edit": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON at line 3"):
        load_dataset(path)


def test_top_level_must_be_a_list(tmp_path):
    path = tmp_path / "object.json"
    path.write_text(json.dumps(good_record()), encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("mutate", "code", "lang", "field"),
    [
        (lambda r: r.pop("edit"), "missing-key", None, "edit"),
        (lambda r: r["edit"]["zh"].pop("subject"), "missing-key", "zh", "edit.subject"),
        (lambda r: r["edit"]["zh"].update(prompt="秘鲁的首都是"), "no-slot", "zh", "edit.prompt"),
        (lambda r: r["edit"]["en"].update(prompt="{} {} is"), "many-slots", "en", "edit.prompt"),
        (lambda r: r["edit"]["en"].update(subject=" "), "empty", "en", "edit.subject"),
        (lambda r: r["edit"]["en"].update(subject=None), "empty", "en", "edit.subject"),
        (lambda r: r["edit"]["en"].update(target_new=""), "empty", "en", "edit.target_new"),
        (lambda r: r["edit"]["zh"].update(target_true=""), "empty", "zh", "edit.target_true"),
        (lambda r: r["edit"]["zh"].update(target_new="利马"), "same-targets", "zh", "edit.target_new"),
        (lambda r: r["edit"]["en"].update(target_new=" LIMA "), "same-targets", "en", "edit.target_new"),
        (lambda r: r["paraphrase_prompts"].update(english=["x"]), "unknown-lang", "english", "paraphrase_prompts"),
        (lambda r: r["neighborhood_answers"]["zh"].append("x"), "length-mismatch", "zh", "neighborhood_answers"),
        (lambda r: r["neighborhood_answers"].pop("zh"), "length-mismatch", "zh", "neighborhood_answers"),
        (lambda r: r["multi_hop_new_answer"].pop("en"), "missing-key", "en", "multi_hop_new_answer"),
        (lambda r: r["paraphrase_prompts"]["en"].append(""), "empty", "en", "paraphrase_prompts[1]"),
        (lambda r: r.update(edit={}), "empty", None, "edit"),
        (lambda r: r.update(templated="no"), "bad-type", None, "templated"),
        (lambda r: r.update(split=""), "bad-type", None, "split"),
        (lambda r: r["edit"].update(en="The capital of Peru is Lima"), "bad-type", "en", "edit"),
    ],
)
def test_each_error(mutate, code, lang, field):
    record = good_record()
    mutate(record)
    report = validate([record], source="t.json")
    assert (code, 1, lang, field) in codes(report.errors), report


def test_bad_id_type_is_an_error_and_the_record_is_named_by_position():
    record = good_record()
    record["example_id"] = True
    assert ("bad-type", "#1", None, "example_id") in codes(validate([record]).errors)


def test_duplicate_ids_are_an_error():
    report = validate([good_record(1), good_record(1)])
    assert codes(report.errors) == {("duplicate-id", 1, None, "example_id")}


def test_record_without_id_is_named_by_position():
    record = good_record()
    del record["example_id"]
    report = validate([good_record(1), record])
    assert ("missing-key", "#2", None, "example_id") in codes(report.errors)


def test_question_form_records_need_no_slot_and_may_lack_subject_and_true_target():
    record = good_record()
    record["templated"] = False
    record["edit"]["en"].update(prompt="Which city is the capital of Peru?", subject=None, target_true=None)
    record["edit"]["zh"].update(prompt="秘鲁的首都是哪座城市？")
    report = validate([record])
    assert report.ok, report
    assert codes(report.warnings) == {("unknown-true", None, None, "edit.target_true")}
    assert "1 edit(s) of 1 record(s)" in report.warnings[0].message


def test_templated_record_without_slot_is_an_error_but_loads_when_marked_question_form(tmp_path):
    record = good_record()
    record["edit"]["en"]["prompt"] = "Which city is the capital of Peru?"
    record["edit"]["zh"]["prompt"] = "秘鲁的首都是哪座城市？"
    assert {p.code for p in validate([record]).errors} == {"no-slot"}
    record["templated"] = False
    path = tmp_path / "q.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    (loaded,) = load_dataset(path)
    assert loaded.templated is False
    assert loaded.edit["en"].filled() == "Which city is the capital of Peru?"


def test_warning_subject_not_in_paraphrase():
    record = good_record()
    record["paraphrase_prompts"]["en"].append("The seat of government of that Andean country is")
    report = validate([record])
    assert report.ok
    assert codes(report.warnings) == {("subject-not-in-paraphrase", 1, "en", "paraphrase_prompts[1]")}


def test_subject_match_in_paraphrase_ignores_case():
    record = good_record()
    record["paraphrase_prompts"]["en"] = ["PERU has its capital in"]
    assert validate([record]).warnings == []


def test_warning_language_missing_in_some_records():
    partial = good_record(2)
    for key in ("edit", "paraphrase_prompts", "neighborhood_prompts", "neighborhood_answers"):
        partial[key].pop("zh")
    report = validate([good_record(1), partial, good_record(3)])
    assert report.ok
    (warning,) = report.warnings
    assert (warning.code, warning.record_id, warning.lang, warning.field) == ("missing-lang", None, "zh", "edit")
    assert "1 of 3 records" in warning.message and "(2)" in warning.message


def test_warning_language_missing_in_one_field_of_a_record():
    record = good_record()
    record["paraphrase_prompts"].pop("zh")
    report = validate([record])
    assert report.ok
    assert codes(report.warnings) == {("missing-lang", 1, "zh", "paraphrase_prompts")}


def test_validate_accepts_record_objects():
    records = [Record.from_dict(good_record(1)), Record.from_dict(good_record(1))]
    assert {p.code for p in validate(records).errors} == {"duplicate-id"}


def test_from_dict_raises_on_structural_problems_only():
    broken = good_record()
    del broken["edit"]["en"]["target_new"]
    with pytest.raises(DataError, match=r"record 1 \[en\] edit.target_new: missing key"):
        Record.from_dict(broken)
    same = copy.deepcopy(good_record())
    same["edit"]["en"]["target_new"] = "Lima"
    assert Record.from_dict(same).edit["en"].target_new == "Lima"  # semantic problems are validate's job


# ----------------------------------------------------------------------------- text-length limit

LONG = "x" * (MAX_TEXT_CHARS + 1)


@pytest.mark.parametrize(
    ("mutate", "lang", "field"),
    [
        (lambda r: r["edit"]["en"].update(prompt=LONG[2:] + "{}"), "en", "edit.prompt"),
        (lambda r: r["edit"]["zh"].update(subject=LONG), "zh", "edit.subject"),
        (lambda r: r["edit"]["en"].update(target_new=LONG), "en", "edit.target_new"),
        (lambda r: r["edit"]["en"].update(target_true=LONG), "en", "edit.target_true"),
        (lambda r: r["paraphrase_prompts"]["zh"].append(LONG), "zh", "paraphrase_prompts[1]"),
        (lambda r: r["neighborhood_prompts"]["en"].__setitem__(0, LONG), "en", "neighborhood_prompts[0]"),
        (lambda r: r["neighborhood_answers"]["en"].__setitem__(0, LONG), "en", "neighborhood_answers[0]"),
        (lambda r: r["multi_hop_questions"]["en"].__setitem__(0, LONG), "en", "multi_hop_questions[0]"),
        (lambda r: r["multi_hop_new_answer"].update(en=LONG), "en", "multi_hop_new_answer"),
    ],
)
def test_text_longer_than_the_limit_is_an_error_in_every_field(mutate, lang, field):
    record = good_record()
    mutate(record)
    report = validate([record], source="t.json")
    assert ("too-long", 1, lang, field) in codes(report.errors), report
    problem = next(p for p in report.errors if p.code == "too-long")
    assert problem.message == "2001 characters, more than the limit of 2000 (MAX_TEXT_CHARS)"


def test_text_at_the_limit_is_fine_and_max_chars_changes_the_limit():
    record = good_record()
    record["edit"]["en"]["target_new"] = "x" * MAX_TEXT_CHARS
    assert validate([record]).ok
    tight = validate([good_record()], max_chars=10)
    assert {p.code for p in tight.errors} == {"too-long"}
    assert "more than the limit of 10 (set for this check)" in tight.errors[0].message
    record["edit"]["en"]["prompt"] = "y" * 100_000 + " {}"
    assert validate([record], max_chars=200_000).ok


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_max_chars_must_be_a_positive_integer(bad):
    with pytest.raises(DataError, match="max_chars must be a positive integer"):
        validate([good_record()], max_chars=bad)


def test_max_text_chars_is_exported_and_documented():
    import memla.data
    from memla.data import validation

    assert memla.data.MAX_TEXT_CHARS == validation.MAX_TEXT_CHARS == 2000
    assert "MAX_TEXT_CHARS" in memla.data.__all__
    source = Path(validation.__file__).read_text(encoding="utf-8")
    assert 'MAX_TEXT_CHARS = 2000\n"""' in source and "23 GB" in source  # the docstring says why


def test_loading_a_file_with_a_too_long_prompt_refuses_it(tmp_path):
    record = good_record()
    record["edit"]["en"]["prompt"] = "x" * 100_000 + " {}"
    path = tmp_path / "long.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(DataError, match=r"record 1 \[en\] edit.prompt: 100003 characters, more than the limit of 2000"):
        load_dataset(path)


def test_messages_quote_long_texts_shortened():
    record = good_record()
    record["edit"]["en"]["prompt"] = "z" * 5000
    report = validate([record], max_chars=10_000)
    (problem,) = report.errors
    assert problem.code == "no-slot" and len(problem.message) < 200 and "zzz..." in problem.message
