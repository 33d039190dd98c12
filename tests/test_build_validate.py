"""Planning, guideline checks, the regeneration loop and localisation (memla.build.plan / validate / localize)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "build"))

from build_fakes import TTL, FakeServer, chat_reply, good_sample  # noqa: E402

from memla.build.facts import extract_chains, extract_facts, fetch_labels  # noqa: E402
from memla.build.generate import ChatClient, GeneratedSample, Neighborhood, generation_messages, parse_sample  # noqa: E402
from memla.build.localize import assemble_record, localize, mask_entities, unmask  # noqa: E402
from memla.build.plan import Case, Entity, Hop, plan_cases  # noqa: E402
from memla.build.validate import check_sample, generate_valid_sample, mentions  # noqa: E402

FRANCE = Case(
    case_id=3,
    relation="P36",
    relation_label="capital",
    subject=Entity("Q142", "France"),
    target_true=Entity("Q90", "Paris"),
    target_new=Entity("Q64", "Berlin"),
    neighbors=((Entity("Q17", "Japan"), Entity("Q1490", "Tokyo")), (Entity("Q38", "Italy"), Entity("Q220", "Rome"))),
    hop=Hop(Entity("Q42264", "La Marseillaise"), "^P85", "anthem"),
)

GOOD = GeneratedSample(
    prompt="The capital of {} is",
    paraphrases=("France's capital city is", "The seat of government of France is"),
    neighborhood=(Neighborhood("Japan", "The capital of Japan is"), Neighborhood("Italy", "The capital of Italy is")),
    multi_hop_question="What is the capital of the country whose anthem is La Marseillaise?",
)


def codes(sample, case=FRANCE):
    return {i.code for i in check_sample(sample, case)}


def test_good_sample_passes():
    assert check_sample(GOOD, FRANCE) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"prompt": "The capital of France is"}, "placeholder"),
        ({"prompt": "The capital of {} {} is"}, "placeholder"),
        ({"prompt": "The capital of {0} is"}, "placeholder"),
        ({"prompt": "The capital of {} (France) is"}, "prompt_names_subject"),
        ({"prompt": "The capital of {} is Paris, not"}, "answer_leak"),
        ({"paraphrases": ("The capital of France is", "France's capital city is")}, "paraphrase_same"),
        ({"paraphrases": ("France's capital city is", "france's capital city is!")}, "paraphrase_duplicate"),
        ({"paraphrases": ("Its capital city is", "France's capital city is")}, "paraphrase_no_subject"),
        ({"paraphrases": ("{}'s capital city is", "France's capital city is")}, "paraphrase_placeholder"),
        ({"paraphrases": ("France's capital city is",)}, "paraphrase_count"),
        (
            {"neighborhood": (Neighborhood("France", "The capital of France is"), GOOD.neighborhood[1])},
            "neighbor_is_subject",
        ),
        (
            {"neighborhood": (Neighborhood("Spain", "The capital of Spain is"), GOOD.neighborhood[1])},
            "neighbor_unknown",
        ),
        (
            {"neighborhood": (Neighborhood("Japan", "Unlike France, the capital of Japan is"), GOOD.neighborhood[1])},
            "neighbor_names_subject",
        ),
        ({"neighborhood": (Neighborhood("Japan", "The capital city is"), GOOD.neighborhood[1])}, "neighbor_prompt"),
        (
            {"neighborhood": (Neighborhood("Japan", "The capital of Japan, Tokyo, is"), GOOD.neighborhood[1])},
            "answer_leak",
        ),
        ({"neighborhood": GOOD.neighborhood[:1]}, "neighbor_missing"),
        ({"multi_hop_question": "What is the capital of France?"}, "multihop_names_intermediate"),
        ({"multi_hop_question": "What is the capital of the country with that anthem?"}, "multihop_no_start"),
        ({"multi_hop_question": ""}, "empty"),
    ],
)
def test_each_guideline_is_checked(change, code):
    sample = GeneratedSample(**{**GOOD.__dict__, **change})
    assert code in codes(sample)


def test_mentions_whole_words_and_cjk():
    assert mentions("The capital of Japan is", "japan", "en")
    assert not mentions("Japanese food", "Japan", "en")
    assert mentions("日本的首都是", "日本", "zh")


def test_parse_sample_checks_layout():
    ok = parse_sample(json.dumps(GOOD.to_dict()), case=FRANCE)
    assert ok == GOOD
    with pytest.raises(ValueError, match="multi_hop_question"):
        parse_sample(json.dumps({k: v for k, v in GOOD.to_dict().items() if k != "multi_hop_question"}), case=FRANCE)
    with pytest.raises(ValueError, match="neighborhood"):
        parse_sample(json.dumps({**GOOD.to_dict(), "neighborhood": ["The capital of Japan is"]}), case=FRANCE)


def test_generation_prompt_follows_appendix_a():
    text = generation_messages(FRANCE, n_paraphrases=3)[1]["content"]
    assert "Fact: (France, capital, Paris)" in text
    assert '"{}"' in text and "3 different" in text
    assert '"Japan" (answer: "Tokyo")' in text
    assert 'must NOT name "France"' in text and "La Marseillaise" in text
    no_hop = generation_messages(Case(**{**FRANCE.__dict__, "hop": None}))[1]["content"]
    assert "multi_hop_question" not in no_hop


def _bad(sample: dict, **change) -> str:
    return json.dumps({**sample, **change})


def test_regeneration_passes_on_second_try():
    prompt_text = generation_messages(FRANCE)[1]["content"]
    good = good_sample(prompt_text)
    script = [chat_reply(_bad(good, prompt="The capital of France is"))]
    with FakeServer(lambda r: chat_reply(json.dumps(good)), script=script) as srv:
        out = generate_valid_sample(FRANCE, client=ChatClient(srv.url, "m", sleep=lambda s: None))
        assert out.sample is not None and out.tries == 2 and out.history == [["placeholder", "prompt_names_subject"]]
        second = srv.requests[1].json()["messages"]
    assert second[2] == {"role": "assistant", "content": _bad(good, prompt="The capital of France is")}
    assert "placeholder" in second[3]["content"] and '"{}"' in second[3]["content"]


def test_regeneration_drops_after_three_tries(caplog):
    script = [chat_reply("Sure! Here is the JSON: {}")]
    with FakeServer(
        lambda r: chat_reply(_bad(GOOD.to_dict(), multi_hop_question="What is the capital of France?")), script=script
    ) as srv:
        out = generate_valid_sample(FRANCE, client=ChatClient(srv.url, "m", sleep=lambda s: None), max_tries=3)
        assert len(srv.requests) == 3
    assert out.sample is None and out.tries == 3
    assert out.history[0] == ["invalid_json"]
    assert [i.code for i in out.issues] == ["multihop_names_intermediate", "multihop_no_start"]
    assert "dropped after 3 tries" in caplog.text and "intermediate entity" in caplog.text


def test_plan_is_deterministic_and_sound():
    from memla.build.sparql import OxigraphEndpoint

    ep = OxigraphEndpoint.from_file(TTL)
    facts = {"P36": extract_facts(ep, "P36"), "P37": extract_facts(ep, "P37")}
    chains = extract_chains(ep, "^P85", "P36") + extract_chains(ep, "P17", "P36")
    ids = (
        {x for fs in facts.values() for f in fs for x in (f.subject, f.object)}
        | {c.start for c in chains}
        | {"P36", "P37", "P85", "P17"}
    )
    labels = fetch_labels(ep, ids, langs=["en"])
    cases, drops = plan_cases(facts, labels=labels, source_lang="en", chains=chains, hop_order=["P17", "^P85"], seed=1)
    again, _ = plan_cases(facts, labels=labels, source_lang="en", chains=chains, hop_order=["P17", "^P85"], seed=1)
    assert cases == again and drops == []
    assert [c.case_id for c in cases] == list(range(len(cases)))
    assert [c.relation for c in cases[:4]] == ["P36", "P37", "P36", "P37"]
    for c in cases:
        assert c.target_new.id != c.target_true.id
        assert len(c.neighbors) == 2
        assert all(n.id != c.subject.id and a.id != c.target_new.id for n, a in c.neighbors)
    france = next(c for c in cases if c.subject.id == "Q142" and c.relation == "P36")
    assert france.hop.start.id == "Q243" and france.hop.relation == "P17"  # hop_order prefers P17
    assert next(c for c in cases if c.subject.id == "Q17" and c.relation == "P36").hop.relation == "^P85"
    assert Case.from_dict(json.loads(json.dumps(france.to_dict()))) == france


def test_mask_and_unmask():
    masked, used = mask_entities("Japan's capital, unlike Japanese food, is", ["Japan", "Italy"], lang="en")
    assert masked == "{1}'s capital, unlike Japanese food, is" and used == [1]
    assert unmask("La capitale de {1} est", {1: "Japon"}, lang="fr") == "La capitale de Japon est"
    assert unmask("{1} 的首都是", {1: "日本"}, lang="zh") == "日本的首都是"
    assert unmask("｛ 1 ｝の首都は", {1: "日本"}, lang="ja") == "日本の首都は"
    assert unmask("{ }的首都是", {}, lang="zh", slot=True) == "{}的首都是"
    assert unmask("La capitale est", {1: "Japon"}, lang="fr") is None  # placeholder lost
    assert unmask("{1} et {1}", {1: "Japon"}, lang="fr") is None  # duplicated
    assert unmask("La capitale de {} est", {}, lang="fr") is None  # a slot where none belongs
    assert unmask("La capitale de est", {}, lang="fr", slot=True) is None


class TagTranslator:
    """Tags each text with the target language; loses placeholders in texts containing 'drop'."""

    name = "tag"

    def __init__(self):
        from memla.build.http import RequestStats

        self.stats = RequestStats()
        self.calls = []

    def translate(self, texts, *, source, target):
        self.calls.append(list(texts))
        return [f"[{target}] " + (t.replace("{1}", "X") if "drop" in t else t) for t in texts]


def test_localize_uses_wikidata_labels_and_falls_back():
    labels = {
        "Q142": {"zh": "法国"},
        "Q90": {"zh": "巴黎"},
        "Q64": {"zh": "柏林"},
        "Q17": {"zh": "日本"},
        "Q1490": {"zh": "东京"},
        "Q38": {"zh": "意大利"},
        "Q42264": {"zh": "马赛曲"},
        # Rome (Q220) has no zh label: it is translated
    }
    sample = GeneratedSample(
        **{**GOOD.__dict__, "paraphrases": ("France's capital city is", "Let us drop France: its capital is")}
    )
    tr = TagTranslator()
    res = localize([(FRANCE, sample)], target="zh", source="en", labels=labels, translator=tr)
    e = res.entries[3]
    assert e.subject == "法国" and e.target_true == "巴黎" and e.target_new == "柏林"
    assert e.prompt == "[zh] The capital of {} is"
    assert e.paraphrases[0] == "[zh]法国's capital city is"  # no space next to CJK
    assert e.paraphrases[1] == "[zh] Let us drop France: its capital is"  # placeholder lost -> unmasked retry
    assert e.neighborhood_prompts == ("[zh] The capital of 日本 is", "[zh] The capital of 意大利 is")
    assert e.neighborhood_answers == ("东京", "[zh] Rome")
    assert "马赛曲" in e.multi_hop_question and e.multi_hop_answer == "柏林"
    assert res.counts["placeholder_fallback"] == 1 and res.counts["label_translated"] == 1
    rec = assemble_record(
        FRANCE,
        {"en": localize([(FRANCE, GOOD)], target="en", source="en", labels={}, translator=None).entries[3], "zh": e},
        langs=["zh", "en"],
    )
    assert list(rec["edit"]) == ["zh", "en"]
    assert rec["edit"]["en"] == {
        "prompt": "The capital of {} is",
        "subject": "France",
        "target_new": "Berlin",
        "target_true": "Paris",
    }
    assert rec["multi_hop_new_answer"] == {"zh": "柏林", "en": "Berlin"}
    from memla.data import validate

    assert validate([rec]).errors == []


def test_localize_drops_language_when_slot_is_lost():
    class Lossy(TagTranslator):
        def translate(self, texts, *, source, target):
            return [t.replace("{}", "") for t in super().translate(texts, source=source, target=target)]

    res = localize([(FRANCE, GOOD)], target="de", source="en", labels={}, translator=Lossy())
    assert res.entries == {} and res.drops == [(3, "slot_lost_in_translation")]
