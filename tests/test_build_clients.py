"""The LLM chat client and the translators against local HTTP servers (memla.build.generate / translate)."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "build"))

from build_fakes import FakeServer, Reply, baidu_handler, chat_reply, llm_brain  # noqa: E402

from memla.build.errors import BuildError, ServiceError  # noqa: E402
from memla.build.generate import ChatClient, SampleFormatError, parse_json_object  # noqa: E402
from memla.build.hf import HFTranslator  # noqa: E402
from memla.build.http import PoliteSession, retry_after_seconds  # noqa: E402
from memla.build.translate import (  # noqa: E402
    BaiduTranslator,
    CachedTranslator,
    LLMTranslator,
    TranslationError,
    baidu_sign,
)

KEY = "sk-test-SECRET-123"


def no_sleep(_s: float) -> None:
    pass


def client(url: str, **kw) -> ChatClient:
    kw.setdefault("sleep", no_sleep)
    return ChatClient(url + "/v1", "fake-model", **kw)


def test_chat_protocol_and_key_header():
    with FakeServer(lambda r: chat_reply("hello")) as srv:
        c = client(srv.url, api_key=KEY, temperature=0.3, max_tokens=50, json_mode=True)
        assert c.chat([{"role": "user", "content": "hi"}]) == "hello"
        req = srv.requests[0]
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    body = req.json()
    assert body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }
    assert KEY not in repr(c)


def test_chat_without_key_sends_no_authorization():
    with FakeServer(lambda r: chat_reply("x")) as srv:
        client(srv.url).chat([{"role": "user", "content": "hi"}])
        assert "Authorization" not in srv.requests[0].headers


def test_chat_retries_429_500_and_malformed_bodies():
    slept: list[float] = []
    script = [
        Reply(429, {"error": "rate"}, {"Retry-After": "3"}),
        Reply(500, "internal"),
        Reply(200, "{not json"),
        Reply(200, {"choices": []}),
        Reply(200, {"choices": [{"message": {"content": None}}]}),
    ]
    with FakeServer(lambda r: chat_reply("finally"), script=script) as srv:
        c = client(srv.url, sleep=slept.append, backoff=0.25, max_retries=5)
        assert c.chat([{"role": "user", "content": "hi"}]) == "finally"
        assert len(srv.requests) == 6
    assert slept[0] == 3.0 and len(slept) == 5
    assert c.stats.retries == 5 and c.stats.requests == 6


def test_chat_gives_up_on_malformed_answers():
    with FakeServer(lambda r: Reply(200, "<html>")) as srv:
        c = client(srv.url, max_retries=2)
        with pytest.raises(ServiceError, match="not JSON.*3 attempt"):
            c.chat([{"role": "user", "content": "hi"}])
        assert len(srv.requests) == 3


def test_chat_timeout():
    with FakeServer(lambda r: Reply(200, {}, delay=0.5)) as srv:
        c = client(srv.url, timeout=0.1, max_retries=1)
        with pytest.raises(ServiceError, match="timed out"):
            c.chat([{"role": "user", "content": "hi"}])
        assert c.stats.requests == 2 and c.stats.failures == 1


def test_chat_auth_error_is_not_retried_and_key_is_never_shown(caplog):
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    with FakeServer(lambda r: Reply(401, echo)) as srv:
        c = client(srv.url, api_key=KEY)
        with pytest.raises(ServiceError) as info:
            c.chat([{"role": "user", "content": "hi"}])
        assert len(srv.requests) == 1
    assert info.value.status == 401
    assert KEY not in str(info.value) and "***" in str(info.value)
    with FakeServer(lambda r: Reply(503, echo)) as srv:
        with pytest.raises(ServiceError):
            client(srv.url, api_key=KEY, max_retries=1).chat([{"role": "user", "content": "hi"}])
    assert KEY not in caplog.text


def test_retry_after_parsing():
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_strict_json_parsing():
    assert parse_json_object('  {"a": 1}\n') == {"a": 1}
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    for bad in ('Sure! {"a": 1}', '{"a": 1} hope this helps', "[1, 2]", "{'a': 1}", '{"a": 1,}', ""):
        with pytest.raises(SampleFormatError):
            parse_json_object(bad)


# --- translators --------------------------------------------------------------------------


def test_llm_translator_keeps_order_and_placeholders():
    with FakeServer(llm_brain) as srv:
        tr = LLMTranslator(client(srv.url), batch_size=2)
        out = tr.translate(["The capital of {} is", "{1} is big", "Hello"], source="en", target="de")
        assert out == ["[de] The capital of {} is", "[de] {1} is big", "[de] Hello"]
        assert len(srv.requests) == 2
        assert srv.requests[0].json()["temperature"] == 0.0


def test_llm_translator_retries_bad_layouts_then_fails():
    bad = [chat_reply("not json"), chat_reply('{"translations": ["only one"]}')]
    with FakeServer(llm_brain, script=list(bad)) as srv:
        assert LLMTranslator(client(srv.url)).translate(["a", "b"], source="en", target="fr") == ["[fr] a", "[fr] b"]
        assert len(srv.requests) == 3
    with FakeServer(lambda r: chat_reply('{"translations": []}')) as srv:
        with pytest.raises(TranslationError, match="after 3 tries"):
            LLMTranslator(client(srv.url)).translate(["a"], source="en", target="fr")


def test_baidu_sign_matches_documented_example():
    # Baidu's documentation example: appid 2015063000000001, q apple, salt 1435660288, key 12345678
    assert (
        baidu_sign("2015063000000001", "apple", "1435660288", "12345678")
        == hashlib.md5(b"2015063000000001apple143566028812345678").hexdigest()
    )
    assert baidu_sign("2015063000000001", "apple", "1435660288", "12345678") == "f89f9594663708c1605f3d736d01d2d4"


def baidu(url: str, **kw) -> BaiduTranslator:
    session = PoliteSession("baidu", sleep=no_sleep, max_retries=kw.pop("max_retries", 3), timeout=kw.pop("timeout", 5))
    return BaiduTranslator(
        "20240001", KEY, url=url + "/api/trans/vip/translate", session=session, salt=lambda: "4242", **kw
    )


def test_baidu_signed_form_and_language_codes():
    with FakeServer(baidu_handler("20240001", KEY)) as srv:
        tr = baidu(srv.url)
        out = tr.translate(["The capital of {} is", "two\nlines"], source="en", target="ja")
        form = srv.requests[0].form()
    assert out == ["<jp>The capital of {} is", "<jp>two lines"]
    assert form["from"] == "en" and form["to"] == "jp" and form["salt"] == "4242" and form["appid"] == "20240001"
    assert form["sign"] == baidu_sign("20240001", form["q"], "4242", KEY)
    assert KEY not in srv.requests[0].body.decode() and KEY not in repr(tr)


def test_baidu_splits_long_batches():
    with FakeServer(baidu_handler("20240001", KEY)) as srv:
        texts = [f"sentence {i} " + "x" * 1000 for i in range(12)]
        out = baidu(srv.url).translate(texts, source="en", target="fr")
        assert out == [f"<fra>{t}" for t in texts]
        assert len(srv.requests) >= 3
        assert all(len(r.form()["q"].encode()) <= 6000 for r in srv.requests)


def test_baidu_retries_rate_limit_http_errors_and_bad_json():
    script = [
        Reply(200, {"error_code": "54003", "error_msg": "Invalid Access Limit"}),
        Reply(500, "oops"),
        Reply(200, "{{{"),
        Reply(429, "too many"),
    ]
    with FakeServer(baidu_handler("20240001", KEY), script=script) as srv:
        tr = baidu(srv.url, max_retries=5)
        assert tr.translate(["hi"], source="en", target="zh") == ["<zh>hi"]
        assert len(srv.requests) == 5


def test_baidu_fatal_errors_and_timeouts():
    with FakeServer(lambda r: Reply(200, {"error_code": "52003", "error_msg": f"UNAUTHORIZED USER {KEY}"})) as srv:
        with pytest.raises(ServiceError, match="52003") as info:
            baidu(srv.url).translate(["hi"], source="en", target="zh")
        assert len(srv.requests) == 1 and KEY not in str(info.value)
    with FakeServer(lambda r: Reply(200, {"error_code": "54003", "error_msg": "limit"})) as srv:
        with pytest.raises(ServiceError, match="gave up after 3"):
            baidu(srv.url, max_retries=2).translate(["hi"], source="en", target="zh")
    with FakeServer(lambda r: Reply(200, {"trans_result": []}, delay=0.5)) as srv:
        with pytest.raises(ServiceError, match="timed out"):
            baidu(srv.url, max_retries=1, timeout=0.1).translate(["hi"], source="en", target="zh")
    with FakeServer(
        lambda r: Reply(200, {"from": "en", "to": "zh", "trans_result": [{"src": "a", "dst": "b"}]})
    ) as srv:
        with pytest.raises(ServiceError, match="1 translations for 2 lines"):
            baidu(srv.url).translate(["a", "c"], source="en", target="zh")


def test_baidu_needs_credentials():
    with pytest.raises(BuildError, match="BAIDU_APPID"):
        BaiduTranslator("", "")


class FakeTok:
    """Just enough of an NLLB tokenizer."""

    def __init__(self):
        self.vocab = {"eng_Latn": 5, "deu_Latn": 6, "zho_Hans": 7}
        self.src_lang = None
        self.calls = []

    def get_vocab(self):
        return self.vocab

    def convert_tokens_to_ids(self, tok):
        return self.vocab[tok]

    def __call__(self, batch, **kw):
        import torch

        self.calls.append((self.src_lang, list(batch)))
        return {"input_ids": torch.ones(len(batch), 3, dtype=torch.long)}

    def batch_decode(self, gen, skip_special_tokens=True):
        return [f" t{int(row[0])}-{self.calls[-1][1][i]} " for i, row in enumerate(gen)]


class FakeSeq2Seq:
    def __init__(self):
        self.kwargs = []

    def generate(self, input_ids, **kw):
        self.kwargs.append(kw)
        return input_ids * kw.get("forced_bos_token_id", 0)


def test_hf_translator_sets_nllb_codes():
    tok, mdl = FakeTok(), FakeSeq2Seq()
    loads = []
    tr = HFTranslator("facebook/nllb-200-distilled-600M", batch_size=2, loader=lambda n: loads.append(n) or (tok, mdl))
    out = tr.translate(["a", "b", "c"], source="en", target="de")
    assert out == ["t6-a", "t6-b", "t6-c"]
    assert tok.calls[0][0] == "eng_Latn" and mdl.kwargs[0]["forced_bos_token_id"] == 6
    tr.translate(["d"], source="en", target="zh")
    assert loads == ["facebook/nllb-200-distilled-600M"] and tr.stats.requests == 3
    with pytest.raises(BuildError, match="no language code"):
        tr.translate(["x"], source="en", target="sw")


def test_hf_translator_pair_template_loads_one_model_per_pair():
    loads = []

    class PlainTok(FakeTok):
        def __init__(self):
            super().__init__()
            self.vocab = {}

    tr = HFTranslator(
        "Helsinki-NLP/opus-mt-{src}-{tgt}", loader=lambda n: loads.append(n) or (PlainTok(), FakeSeq2Seq())
    )
    tr.translate(["a"], source="en", target="de")
    tr.translate(["a"], source="en", target="fr")
    assert loads == ["Helsinki-NLP/opus-mt-en-de", "Helsinki-NLP/opus-mt-en-fr"]


def test_cached_translator_memory_survives_restarts(tmp_path):
    calls = []

    class Echo:
        name = "echo"

        def __init__(self):
            from memla.build.http import RequestStats

            self.stats = RequestStats()

        def translate(self, texts, *, source, target):
            calls.append(list(texts))
            return [f"{target}:{t}" for t in texts]

    path = tmp_path / "tm.jsonl"
    tm = CachedTranslator(Echo(), path, chunk_size=2)
    assert tm.translate(["a", "b", "a", "c"], source="en", target="de") == ["de:a", "de:b", "de:a", "de:c"]
    assert calls == [["a", "b"], ["c"]]
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"k": "cut sho')  # a crash mid-line
    tm2 = CachedTranslator(Echo(), path)
    assert tm2.translate(["c", "a", "d"], source="en", target="de") == ["de:c", "de:a", "de:d"]
    assert calls[-1] == ["d"] and tm2.stats.cache_hits == 2
    tm3 = CachedTranslator(Echo(), path)
    assert tm3.translate(["d"], source="en", target="de") == ["de:d"]
    assert all(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if "cut sho" not in line)
