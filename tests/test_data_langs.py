"""Tests of memla.langs: the 12 languages, the join rule, language selection."""

import pytest

from memla.errors import DataError
from memla.langs import LANG_NAMES, LANGS, NO_SPACE, is_known, join, normalize, order_langs, resolve_langs, sep


def test_the_twelve_languages_in_order_with_names():
    assert LANGS == ("en", "zh", "fr", "de", "ja", "ko", "pt", "ru", "it", "es", "pl", "th")
    assert set(LANG_NAMES) == set(LANGS)
    assert LANG_NAMES["zh"] == "Chinese" and LANG_NAMES["th"] == "Thai"
    assert NO_SPACE == frozenset({"zh", "ja", "th"})


@pytest.mark.parametrize("lang", ["zh", "ja", "th"])
def test_no_space_languages_join_without_separator(lang):
    assert sep(lang) == ""
    assert join("{}的首都是".format("法国"), "伦敦", lang) == "法国的首都是伦敦"


@pytest.mark.parametrize("lang", ["en", "fr", "de", "ko", "pt", "ru", "it", "es", "pl", "af", "sw"])
def test_other_languages_join_with_one_space(lang):
    assert sep(lang) == " "
    assert join("The capital of France is", "London", lang) == "The capital of France is London"


def test_join_is_exactly_prompt_sep_target():
    prompt, target = "Die Hauptstadt von Frankreich ist", "London"
    assert join(prompt, target, "de") == prompt + " " + target
    assert join(prompt, target, "de").startswith(prompt)


def test_is_known_accepts_iso_codes_and_rejects_others():
    assert all(is_known(code) for code in LANGS)
    assert is_known("af") and is_known("sw") and is_known("cs")
    assert not is_known("xx")
    assert not is_known("EN")  # datasets must use lower-case codes
    assert not is_known("zh-cn")
    assert not is_known(3)


def test_normalize_maps_region_tags_and_dataset_aliases():
    assert normalize("zh-cn") == "zh"
    assert normalize("pt_BR") == "pt"
    assert normalize("cz") == "cs"
    assert normalize("du") == "nl"
    assert normalize(" EN ") == "en"


def test_resolve_langs_all_string_and_iterable():
    assert resolve_langs("all") == LANGS
    assert resolve_langs("ALL") == LANGS
    assert resolve_langs("en,zh") == ("en", "zh")
    assert resolve_langs(" en , zh ,en") == ("en", "zh")
    assert resolve_langs(["th", "af"]) == ("th", "af")
    assert resolve_langs(("ZH-CN",)) == ("zh",)


def test_resolve_langs_unknown_code_lists_known_ones():
    with pytest.raises(DataError) as info:
        resolve_langs("en,xx")
    message = str(info.value)
    assert "'xx'" in message
    for code in LANGS:
        assert code in message


def test_resolve_langs_rejects_an_empty_selection():
    with pytest.raises(DataError):
        resolve_langs("")
    with pytest.raises(DataError):
        resolve_langs([])


def test_order_langs_puts_benchmark_languages_first():
    assert order_langs(["sw", "th", "en", "af", "zh", "en"]) == ("en", "zh", "th", "af", "sw")
