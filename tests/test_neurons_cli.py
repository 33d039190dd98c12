"""`memla neurons` on a tiny model saved to disk."""

import json

import pytest
from tiny import save_tiny

from memla.cli import main
from memla.cli.neurons import parse_layers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


def test_parse_layers():
    assert parse_layers("0-2,5") == [0, 1, 2, 5]
    assert parse_layers(None) is None


def test_neurons_prompt(model_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    argv = ["neurons", "--prompt", "The capital of {} is", "--subject", "France", "--target", "Paris",
            "--model", model_dir, "--steps", "3", "--top", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top 5 neurons" in out and "knowledge neurons per layer" in out and "total" in out
    assert list((tmp_path / "neurons").glob("*.safetensors"))  # cached
    assert main(argv + ["--reference", "--no-cache", "--layers", "1"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "The capital of {} is", "--target", "Paris"], "--subject"),
    (["--prompt", "The capital of France is", "--subject", "France", "--target", "Paris"], "no {} slot"),
    (["--prompt", "The capital of France is"], "--target is required"),
    (["--prompt", "The capital of France is", "--target", " "], "empty target"),
    (["--prompt", "The capital of France is", "--target", "Paris", "--layers", "a-b"], "--layers"),
])
def test_neurons_bad_input_exits_2(model_dir, capsys, argv, message):
    assert main(["neurons", *argv, "--model", model_dir, "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_neurons_dataset(model_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLA_CACHE", str(tmp_path))
    record = {
        "example_id": 17, "relation": "P36", "relation_description": "capital",
        "edit": {"en": {"prompt": "The capital of {} is", "subject": "France", "target_new": "London",
                        "target_true": "Paris"},
                 "zh": {"prompt": "{}的首都是", "subject": "法国", "target_new": "伦敦", "target_true": "巴黎"}},
        "paraphrase_prompts": {"en": ["France's capital city is"], "zh": ["法国的首都城市是"]},
        "neighborhood_prompts": {"en": ["The capital of Japan is"], "zh": ["日本的首都是"]},
        "neighborhood_answers": {"en": ["Tokyo"], "zh": ["东京"]},
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    assert main(["neurons", "--dataset", str(path), "--record", "17", "--source", "en", "--langs", "all",
                 "--model", model_dir, "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "independent" in out and "zh" in out
    assert main(["neurons", "--dataset", str(path), "--record", "99", "--model", model_dir]) == 2
