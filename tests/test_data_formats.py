"""Tests of the converters (memla.data.formats) on small fixture files in each public layout."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from memla.data import DataError, load_dataset, read_raw, save_dataset, validate
from memla.data.formats import CONVERTERS, convert, template

FIXTURES = Path(__file__).parent / "fixtures" / "data"
BMIKE = FIXTURES / "bmike53"
MZSRE = FIXTURES / "mzsre"
MLAKE = FIXTURES / "mlake"
INPUTS = {
    "bmike53": [BMIKE / "zsre_test_zh.json", BMIKE / "zsre_test_fr.json"],
    "mzsre": sorted(MZSRE.glob("*.json")),
    "mlake": sorted(MLAKE.glob("*/*.json")),
    "counterfact": [FIXTURES / "counterfact" / "counterfact.json"],
    "mquake": [FIXTURES / "mquake" / "MQuAKE-CF-3k.json"],
}


def by_id(records):
    return {r.example_id: r for r in records}


def test_template_replaces_the_first_occurrence_only():
    assert template("Which river flows through Kraków?", "Kraków") == "Which river flows through {}?"
    assert template("Paris is in Paris", "Paris") == "{} is in Paris"
    assert template("哪条河流经克拉科夫？", "克拉科夫") == "哪条河流经{}？"
    assert template("Who wrote it?", "Tolkien") is None
    assert template("Who wrote it?", None) is None


@pytest.mark.parametrize("fmt", sorted(INPUTS))
def test_every_converter_output_is_valid_and_round_trips(fmt, tmp_path):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in INPUTS[fmt]}
    records = convert(fmt, INPUTS[fmt])
    assert records
    assert validate(records).ok, validate(records)
    out = save_dataset(records, tmp_path / f"{fmt}.json")
    assert load_dataset(out) == records
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in INPUTS[fmt]} == before  # inputs untouched


def test_bmike53_joins_languages_by_case_id():
    records = by_id(convert("bmike53", INPUTS["bmike53"]))
    assert sorted(records) == [0, 1]
    kr = records[0]
    assert kr.langs == ("en", "zh", "fr")
    assert kr.templated is True
    assert kr.edit["en"].prompt == "Which river flows through {}?"
    assert kr.edit["zh"].prompt == "哪条河流经{}？" and kr.edit["zh"].subject == "克拉科夫"
    assert kr.edit["fr"].filled() == "Quel fleuve traverse Cracovie ?"
    assert kr.edit["en"].target_new == "Danube" and kr.edit["en"].target_true is None  # zsRE subset has no "old"
    assert kr.paraphrase_prompts["zh"] == ["流经克拉科夫的河是哪一条？"]
    assert kr.neighborhood_prompts["en"] == ["who wrote the novel the master and margarita"]  # "nq question: " dropped
    assert kr.neighborhood_answers["en"] == ["Mikhail Bulgakov"]
    assert kr.multi_hop_questions["fr"] == ["Dans quelle mer se jette le fleuve qui traverse Cracovie ?"]
    assert kr.multi_hop_new_answer == {"en": "Black Sea", "zh": "黑海", "fr": "mer Noire"}


def test_bmike53_untemplatable_subject_makes_a_question_form_record():
    kili = by_id(convert("bmike53", INPUTS["bmike53"]))[1]
    # the zh subject 乞力马扎罗山 does not occur in its question: no language keeps a {} slot
    assert kili.templated is False
    assert all("{}" not in fact.prompt for fact in kili.edit.values())
    assert kili.edit["en"].prompt == "In which country is Mount Kilimanjaro located?"
    assert kili.edit["en"].subject == "Mount Kilimanjaro"


def test_bmike53_counterfact_subset_and_several_subsets():
    records = by_id(convert("bmike53", [*INPUTS["bmike53"], BMIKE / "counterfact_test_de.json"]))
    assert sorted(records, key=str) == ["counterfact-0", "zsre-0", "zsre-1"]
    tower = records["counterfact-0"]
    assert tower.langs == ("en", "de")
    assert tower.edit["de"].prompt == "Der {} steht in der Stadt"
    assert (tower.edit["en"].target_new, tower.edit["en"].target_true) == ("Rome", "Paris")
    assert tower.multi_hop_new_answer["de"] == "Italien"


def test_bmike53_misaligned_files_are_an_error(tmp_path):
    items = json.loads((BMIKE / "zsre_test_fr.json").read_text(encoding="utf-8"))
    items[0]["en"]["src"] = "Which river runs through Kraków?"
    path = tmp_path / "zsre_test_fr.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match="not aligned"):
        convert("bmike53", [BMIKE / "zsre_test_zh.json", path])


def test_bmike53_missing_field_names_file_case_and_language(tmp_path):
    items = json.loads((BMIKE / "zsre_test_zh.json").read_text(encoding="utf-8"))
    del items[1]["zh"]["alt"]
    path = tmp_path / "zsre_test_zh.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match=r"zsre_test_zh\.json: item 1 \(case 1\) \[zh\]: missing key 'alt'"):
        convert("bmike53", [path])


def test_mzsre_joins_language_pairs_and_normalises_codes():
    records = by_id(convert("mzsre", INPUTS["mzsre"]))
    hobbit, baikal = records[0], records[1]
    assert hobbit.langs == ("en", "zh", "cs")  # "cz" in the file
    assert hobbit.edit["en"].prompt == "Who is the author of {}?"
    assert hobbit.edit["zh"].prompt == "《{}》的作者是谁？"
    assert hobbit.edit["en"].target_true == "J. R. R. Tolkien"  # from "answers"
    assert hobbit.multi_hop_questions["cs"] == ["Kde se narodil autor knihy Hobit?"]
    assert hobbit.multi_hop_new_answer["zh"] == "贝尔法斯特"
    assert baikal.edit["en"].target_true is None
    assert hobbit.templated is True and hobbit.edit["cs"].prompt == "Kdo je autorem knihy {}?"
    assert baikal.templated is True and baikal.edit["cs"].prompt == "Ve které zemi leží {}?"
    warnings = {p.code for p in validate(list(records.values())).warnings}
    assert "unknown-true" in warnings


def test_mlake_cloze_prompts_question_fallback_and_multi_hop():
    records = by_id(convert("mlake", INPUTS["mlake"]))
    turing, novel = records[0], records[1]
    assert turing.templated is False and novel.templated is False
    assert turing.langs == ("en", "de")
    en = turing.edit["en"]
    assert en.prompt == "Alan Turing studied at" and en.subject is None
    assert (en.target_new, en.target_true) == ("Sorbonne University", "King's College, Cambridge")
    assert en.extra == {"target_new_aliases": ["Sorbonne"], "target_true_aliases": ["King's College"]}
    assert turing.paraphrase_prompts["en"] == ["At which university did Alan Turing study?"]
    assert turing.edit["de"].prompt == "Alan Turing studierte am"
    # the first post-edit multi-hop question of the fact, linked by e_prompt; the second is dropped
    assert turing.multi_hop_questions["en"] == ["In which country is the university where Alan Turing studied?"]
    assert turing.multi_hop_new_answer == {"en": "France", "de": "Frankreich"}
    assert (turing.relation, turing.relation_description) == ("P69", "educated at")
    # answer at the start of the sentence: no cloze, the question is the prompt
    assert novel.edit["en"].prompt == "Who wrote the novel Les Misérables?"
    assert novel.paraphrase_prompts == {} and novel.multi_hop_questions == {}


def test_mlake_rejects_unparallel_files_and_multiple_choice(tmp_path):
    items = json.loads((MLAKE / "single_hop" / "de_qa.json").read_text(encoding="utf-8"))
    short = tmp_path / "de_qa.json"
    short.write_text(json.dumps(items[:1], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match="different lengths"):
        convert("mlake", [MLAKE / "single_hop" / "en_qa.json", short])
    with pytest.raises(DataError, match="multiple-choice"):
        convert("mlake", [tmp_path / "en_mcqa.json"])
    with pytest.raises(DataError, match="no single-hop file"):
        convert("mlake", [MLAKE / "multi_hop" / "new_en_qa.json"])


def test_counterfact_mapping():
    records = by_id(convert("counterfact", INPUTS["counterfact"]))
    brazil = records[0]
    assert brazil.langs == ("en",)
    assert brazil.edit["en"].prompt == "The official language of {} is"
    assert (brazil.edit["en"].target_new, brazil.edit["en"].target_true) == ("Italian", "Portuguese")
    assert (brazil.relation, brazil.relation_description) == ("P37", "official language")
    assert len(brazil.paraphrase_prompts["en"]) == 2
    assert brazil.neighborhood_answers["en"] == ["Portuguese"] * 3
    assert records[1].relation_description == "instrument"


def test_mquake_keeps_single_edit_cases():
    records = by_id(convert("mquake", INPUTS["mquake"]))
    assert sorted(records) == [1, 3]  # case 2 has two edits
    ada = records[1]
    assert ada.edit["en"].filled() == "Ada Lovelace is a citizen of"
    assert (ada.edit["en"].target_new, ada.edit["en"].target_true) == ("Canada", "United Kingdom")
    assert len(ada.multi_hop_questions["en"]) == 3 and ada.multi_hop_new_answer == {"en": "Ottawa"}
    assert ada.paraphrase_prompts["en"] == ["What is the country of citizenship of Ada Lovelace?"]
    assert ada.relation == "P27"


def test_load_dataset_can_convert_on_the_fly():
    records = load_dataset(INPUTS["counterfact"][0], format="counterfact")
    assert [r.example_id for r in records] == [0, 1]


def test_unknown_format_and_no_input():
    with pytest.raises(DataError, match="unknown source format 'zsre'"):
        convert("zsre", INPUTS["mzsre"])
    with pytest.raises(DataError, match="no input file"):
        convert("mzsre", [])
    assert sorted(CONVERTERS) == ["bmike53", "counterfact", "mlake", "mquake", "mzsre"]


def test_non_utf8_input_is_reported(tmp_path):
    path = tmp_path / "counterfact.json"
    path.write_bytes(b'[{"case_id": 0, "x": "\xff"}]')
    with pytest.raises(DataError, match="not valid UTF-8"):
        convert("counterfact", [path])


# ----------------------------------------------------------------------------- a file in the wrong layout

TITLES = {"bmike53": "BMIKE-53", "mzsre": "MzsRE", "mlake": "MLaKE", "counterfact": "CounterFact", "mquake": "MQuAKE"}
HINTS = {
    "bmike53": "BMIKE-53 or MzsRE: use --from bmike53 or --from mzsre",
    "mzsre": "BMIKE-53 or MzsRE: use --from bmike53 or --from mzsre",
    "mlake": "MLaKE: use --from mlake",
    "counterfact": "CounterFact: use --from counterfact",
    "mquake": "MQuAKE: use --from mquake",
}
PAIRS = {"bmike53", "mzsre"}  # one entry layout: each reads the other's files


@pytest.fixture
def mkeb_file(tmp_path):
    """Two records of the built-in mkeb-mini, saved under an MLaKE-style name (so that only the layout is wrong)."""
    raw, _ = read_raw("mkeb-mini")
    path = tmp_path / "en_qa.json"
    path.write_text(json.dumps(raw[:2], ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", sorted(CONVERTERS))
def test_every_converter_names_the_mkeb_layout(fmt, mkeb_file):
    message = (
        rf"^{re.escape(str(mkeb_file))} does not look like {re.escape(TITLES[fmt])}: expected a list of .+; "
        r"found keys example_id, relation, relation_description, split, edit, .*\(this looks like the MKEB layout: read it without --from\)$"
    )
    with pytest.raises(DataError, match=message):
        convert(fmt, [mkeb_file])
    with pytest.raises(DataError, match=message):
        load_dataset(mkeb_file, format=fmt)


@pytest.mark.parametrize(
    ("fmt", "source"),
    [(fmt, source) for fmt in sorted(CONVERTERS) for source in sorted(INPUTS) if source != fmt and {fmt, source} != PAIRS],
)
def test_every_converter_names_the_layout_of_another_dataset(fmt, source, tmp_path):
    path = tmp_path / "en_qa.json"  # an MLaKE file name, so that mlake looks at the content
    path.write_bytes(INPUTS[source][0].read_bytes())
    with pytest.raises(DataError, match=rf"does not look like {re.escape(TITLES[fmt])}: .*\(this looks like {re.escape(HINTS[source])}\)$"):
        convert(fmt, [path])


def test_mlake_file_name_error_comes_after_the_layout(mkeb_file, tmp_path):
    renamed = mkeb_file.rename(tmp_path / "mkeb.json")
    with pytest.raises(DataError, match="does not look like MLaKE.*MKEB layout"):
        convert("mlake", [renamed])
    wrong_name = tmp_path / "english.json"
    wrong_name.write_bytes(sorted(MLAKE.glob("single_hop/*.json"))[0].read_bytes())
    with pytest.raises(DataError, match="not an MLaKE file name"):
        convert("mlake", [wrong_name])


def test_a_layout_error_names_an_unknown_layout_without_a_guess(tmp_path):
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps([{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7}, "x"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"found keys a, b, c, d, e, f, \.\.\.$"):
        convert("counterfact", [path])
    path.write_text(json.dumps(["a string"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"does not look like CounterFact: .*; found a string$"):
        convert("counterfact", [path])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", r"no records \(the list is empty\)"),
        ('{"case_id": 0}', r"expected a JSON list of records, got an object"),
        ("[" * 100_000 + "]" * 100_000, r"JSON nested too deeply"),
    ],
)
def test_converters_report_empty_non_list_and_deeply_nested_files(tmp_path, content, message):
    path = tmp_path / "counterfact.json"
    path.write_text(content, encoding="utf-8")
    for fmt in ("counterfact", "bmike53"):
        with pytest.raises(DataError, match=rf"counterfact\.json: {message}"):
            convert(fmt, [path])


def test_converted_records_go_through_the_text_length_limit(tmp_path):
    items = json.loads(INPUTS["counterfact"][0].read_text(encoding="utf-8"))
    items[0]["paraphrase_prompts"] = ["y" * 3000]
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    report = validate(convert("counterfact", [path]))
    assert [(p.code, p.record_id, p.lang, p.field) for p in report.errors] == [("too-long", 0, "en", "paraphrase_prompts[0]")]
    with pytest.raises(DataError, match=r"record 0 \[en\] paraphrase_prompts\[0\]: 3000 characters, more than the limit of 2000"):
        load_dataset(path, format="counterfact")
