"""Key statistics C = E[k kᵀ] (`memla.editors.kv.stats`) and `memla stats`, on tiny random models."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from tiny import save_tiny, tiny_model

from memla.cli import main
from memla.cli._common import console
from memla.editors import EditRequest, apply, get_editor
from memla.editors.kv import stats as S
from memla.errors import MemlaError
from memla.hooks import trace
from memla.models import arch_spec, down_param_names, model_fingerprint
from memla.tokens import encode_text

TEXTS = ["The capital of France is Paris.", "La capitale de la France est Paris.", "法国的首都是巴黎。",
         "Die Hauptstadt von Frankreich ist Paris.", "The capital of Italy is Rome. The capital of Japan is Tokyo."]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setattr(console, "width", 200)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS * 4) + "\n", encoding="utf-8")
    return str(path)


def test_cache_miss_then_hit(corpus, monkeypatch):
    model, tok = tiny_model("llama")
    first = S.layer_stats(model, tok, [0, 1], corpus=[corpus], samples=100, progress=False)
    assert not any(s.cached for s in first.values()) and all(s.path.is_file() for s in first.values())

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(S, "_compute", fail)
    second = S.layer_stats(model, tok, [0, 1], corpus=[corpus], samples=100, progress=False)
    assert all(s.cached and s.count == 100 for s in second.values())
    for layer in (0, 1):
        assert torch.equal(first[layer].mom2, second[layer].mom2)


def test_cache_key_covers_layer_samples_dtype_corpus_and_model(corpus, tmp_path):
    model, tok = tiny_model("llama")
    fp = model_fingerprint(model, skip=down_param_names(model), exact=False)
    key = S.resolve_corpus([corpus]).key
    base = S.stats_path(fp, 0, key, 100, "float32")
    assert len({base, S.stats_path(fp, 1, key, 100, "float32"), S.stats_path(fp, 0, key, 50, "float32"),
                S.stats_path(fp, 0, key, 100, "float64"), S.stats_path("0" * 16, 0, key, 100, "float32")}) == 5
    other = tmp_path / "other.txt"
    other.write_text("Another text entirely.\n", encoding="utf-8")
    assert S.resolve_corpus([str(other)]).key != key
    assert S.resolve_corpus([corpus]).key == key  # contents, not names or times
    spec = arch_spec(model)
    with torch.no_grad():
        model.get_parameter(spec.down_weight_name(0)).add_(1.0)  # what editors change: same statistics
        assert model_fingerprint(model, skip=down_param_names(model), exact=False) == fp
        model.get_parameter(f"{spec.path(spec.mlp_in[1], 0)}.weight").add_(1.0)  # anything else: new statistics
        assert model_fingerprint(model, skip=down_param_names(model), exact=False) != fp


def test_statistics_equal_the_mean_outer_product_of_keys(corpus):
    model, tok = tiny_model("gpt2")
    spec = arch_spec(model)
    name = spec.path(spec.mlp_down, 1)
    keys = []
    for text in TEXTS * 4:
        with torch.no_grad(), trace(model, [name], retain_input=True) as tr:
            model(input_ids=torch.tensor([encode_text(tok, text)]))
        keys.append(tr[name].input[0])
    k = torch.cat(keys)[:150].double()  # (150, d_ff)
    got = S.layer_stats(model, tok, [1], corpus=[corpus], samples=150, dtype="float64", progress=False)[1]
    assert got.count == 150 and got.mom2.dtype == torch.float64
    torch.testing.assert_close(got.mom2, k.T @ k / 150, rtol=1e-6, atol=1e-9)


def test_builtin_corpus_and_hf_fallback_offline(monkeypatch, caplog):
    model, tok = tiny_model("llama")
    monkeypatch.setattr(S, "SAMPLE_SEEDS", {"en": ("The",), "zh": ("这",)})
    builtin = S.resolve_corpus("builtin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level("WARNING"):
        hf = S.resolve_corpus(["hf:wikitext:wikitext-103-raw-v1"])
    assert hf.items == ("builtin",) and hf.key == builtin.key and "not reachable" in caplog.text
    texts = builtin.texts(model, tok, samples=10)
    assert len(texts) == 2 and texts[0].startswith("The") and texts[1].startswith("这")  # one per seed, in turn
    stats = S.layer_stats(model, tok, [0], samples=300, progress=False)[0]
    assert stats.count == 300 and torch.allclose(stats.mom2, stats.mom2.T)
    assert torch.linalg.eigvalsh(stats.mom2.double()).min() > -1e-6  # positive semi-definite


def test_builtin_corpus_is_model_text_sized_to_the_keys_and_cached(monkeypatch):
    """The builtin corpus holds no benchmark sentence (C must not see the scored neighbourhood prompts):
    every text is a seed word continued by the model; there are enough for ``samples`` keys; the texts
    are cached per model, so the statistics of a layer computed later come from the same texts."""
    model, tok = tiny_model("llama")
    seeds = [s for v in S.SAMPLE_SEEDS.values() for s in v]
    texts = S.builtin_texts(model, tok, samples=5000)
    assert len(texts) % len(seeds) == 0 and len(texts) * S.SAMPLE_TOKENS >= 5000
    assert [t for t, s in zip(texts, seeds * len(texts)) if not t.startswith(s)] == []
    assert len({t for t in texts}) > 0.9 * len(texts)  # batches drawn with different generator seeds
    monkeypatch.setattr(S, "sample_texts", lambda *a, **k: pytest.fail("sampled again"))
    assert S.builtin_texts(model, tok, samples=5000) == texts
    first = S.layer_stats(model, tok, [0], samples=5000, progress=False)[0]
    second = S.layer_stats(model, tok, [1], samples=5000, progress=False)[1]
    assert first.count == second.count == 5000


def test_hf_dataset_when_reachable(monkeypatch):
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, config, split, streaming: iter([{"text": t} for t in TEXTS * 50])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    corpus = S.resolve_corpus("hf:fake/corpus")
    assert corpus.items == ("hf:fake/corpus",) and corpus.key != S.resolve_corpus("builtin").key
    model, tok = tiny_model("llama")
    assert corpus.texts(model, tok, samples=20)[:2] == TEXTS[:2]


@pytest.mark.parametrize("fails", ["load", "read"])
def test_unreachable_hub_falls_back_to_builtin(fails, monkeypatch, caplog):
    import requests

    def rows():
        yield {"text": TEXTS[0]}
        raise requests.exceptions.ConnectionError("connection reset while streaming")

    def load_dataset(name, config, split, streaming):
        if fails == "load":  # what datasets raises when the Hub cannot be reached
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")
        return rows()

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(S, "SAMPLE_SEEDS", {"en": ("The",), "zh": ("这",)})
    model, tok = tiny_model("llama")
    with caplog.at_level("WARNING"):
        stats = S.layer_stats(model, tok, [0], corpus="hf:fake/corpus", samples=50, progress=False)[0]
    assert "cannot be reached" in caplog.text and "builtin" in caplog.text
    builtin = S.resolve_corpus("builtin").key
    assert builtin in stats.path.name and stats.count == 50  # cached under the corpus actually used
    again = S.layer_stats(model, tok, [0], corpus="builtin", samples=50, progress=False)[0]
    assert again.cached and torch.equal(again.mom2, stats.mom2)


def test_bad_corpus_and_options(tmp_path):
    with pytest.raises(MemlaError, match="not found"):
        S.resolve_corpus([str(tmp_path / "missing.txt")])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe broken")
    with pytest.raises(MemlaError, match="UTF-8"):
        S.resolve_corpus([str(bad)])
    model, tok = tiny_model("llama")
    with pytest.raises(MemlaError, match="dtype"):
        S.layer_stats(model, tok, [0], dtype="int8")
    with pytest.raises(MemlaError, match="layers"):
        S.layer_stats(model, tok, [9])


def test_rome_with_statistics_uses_the_cache(corpus):
    model, tok = tiny_model("llama")
    cfg = dict(covariance="stats", stats_corpus=[corpus], stats_samples=200, clamp_norm_factor=100.0, lr=0.05,
               steps=30, weight_decay=0.0, context_lengths=[[4, 4]])
    req = EditRequest(prompt="The capital of {}", subject="France", target_new="Tokyo", target_true="Paris")
    result = get_editor("rome", cfg).edit(model, tok, req)
    paths = list((S.stats_dir()).glob("*.safetensors"))
    assert len(paths) == 1 and "-L0-" in paths[0].name
    from memla.evaluate.scoring import score_targets

    with apply(model, result):
        new, true = score_targets(model, tok, [(req.text, "Tokyo", "en"), (req.text, "Paris", "en")])
    assert new.mean > true.mean
    get_editor("memit", {**cfg, "layers": [0, 1]}).edit(model, tok, req)
    assert len(list(S.stats_dir().glob("*.safetensors"))) == 2  # layer 0 reused, layer 1 added


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


def test_cli_stats(model_dir, corpus, capsys):
    argv = ["stats", "--model", model_dir, "--layers", "0,1", "--corpus", corpus, "--samples", "80", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "computed" in out and "64x64" in out and "80" in out
    assert main(argv) == 0
    assert "yes" in capsys.readouterr().out
    assert main(["stats", "--model", model_dir, "--layers", "default", "--corpus", corpus, "--samples", "80",
                 "--no-progress"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--corpus", "/no/such/file.txt"], "not found"),
    (["--layers", "x"], "--layers"),
    (["--layers", "7"], "layers must be in 0..1"),
])
def test_cli_stats_bad_input_exits_2(model_dir, capsys, corpus, argv, message):
    default = [] if "--corpus" in argv else ["--corpus", corpus]
    argv = ["stats", "--model", model_dir, "--samples", "10", "--no-progress", *default, *argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
