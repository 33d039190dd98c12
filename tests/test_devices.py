"""Devices: the ``--device`` / ``--device-map`` options, and models whose layers are split over devices.

A split model carries accelerate's hooks (each block moves its inputs to its own device, the
model moves its outputs back).  Here the split is over CPU entries only, with the hooks forced
on as on a multi-GPU machine, and memla's split-model path is forced too (`memla.tokens`
selects the scored positions itself, as it must when the last layers sit on another device
than the inputs); every editor and the evaluation must then give what the unsplit model
gives.  Tests marked ``gpu`` run on CUDA only (``make test-gpu``).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from edit_support import KV_TINY
from test_eval_support import as_records, small_records
from test_memla_editor import FAST
from tiny import save_tiny, tiny_model

from memla import devices, tokens
from memla.cli import main
from memla.devices import input_device, is_split, module_device, resolve_device
from memla.editors import EditRequest, EditResult, apply, get_editor
from memla.editors.kv import keys
from memla.errors import DeviceError
from memla.evaluate.cells import evaluate_record
from memla.models import arch_spec, load_model, model_fingerprint, num_layers

CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")

LANGS = ("en", "zh", "ja")
# fast settings per method; the key-value editors read real (tiny) covariance statistics
METHODS = {
    "memla": FAST,
    "memla-local": {**FAST, "anchor_subjects": 2, "anchor_batch": 4},
    "rome": {**KV_TINY, "covariance": "stats", "stats_samples": 256},
    "memit": {**KV_TINY, "covariance": "stats", "stats_samples": 256},
    "pmet": {**KV_TINY, "covariance": "stats", "stats_samples": 256},
    "ft": {"steps": 5},
    "ike": {"k": 4},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


def block_map(model, device: str | int = "cpu", *, last: str | int | None = None) -> dict[str, str | int]:
    """A device map with one entry per block and per other top-level module (the layout of ``device_map="auto"``).

    Args:
        model: the model.
        device: where everything goes.
        last: where the second half of the blocks, the final norm and the LM head go instead.
    """
    spec = arch_spec(model)
    inner = spec.layers.rsplit(".", 1)[0]
    n = num_layers(model)
    upper = device if last is None else last
    out: dict[str, str | int] = {}
    for name, _ in model.get_submodule(inner).named_children():
        if f"{inner}.{name}" == spec.layers:
            out.update({f"{spec.layers}.{i}": device if i < n // 2 else upper for i in range(n)})
        else:
            out[f"{inner}.{name}"] = upper if f"{inner}.{name}" == spec.final_norm else device
    out.update({name: upper for name, _ in model.named_children() if name != inner})
    return out


def dispatched(model, device_map):
    """``model`` with accelerate's hooks, placed by ``device_map`` (hooks forced, as on several GPUs)."""
    from accelerate import dispatch_model

    return dispatch_model(model, device_map=device_map, force_hooks=True)


def request_of(record) -> EditRequest:
    """The English edit of ``record``, with its translations into `LANGS`."""
    return EditRequest.from_record(record, "en", langs=LANGS)


def edit_and_evaluate(model, tok, method: str, record, cache, monkeypatch) -> tuple[EditResult, dict, str]:
    """One edit and its evaluation, with a fresh cache folder (nothing computed by another model is reused)."""
    monkeypatch.setenv("MEMLA_CACHE", str(cache))
    monkeypatch.setattr(keys, "_PREFIX_MEMO", OrderedDict())
    result = get_editor(method, METHODS[method]).edit(model, tok, request_of(record))
    with apply(model, result):
        scores = evaluate_record(model, tok, record, LANGS, prefix=result.prefix)
    return result, scores, model_fingerprint(model)


def decisions(scores: dict) -> list[bool]:
    """The ES and PS decisions of `evaluate_record`'s scores, in order."""
    return [item["success"] for lt in LANGS for key in ("es", "ps") for item in scores[lt][key]]


def means(scores: dict) -> list[float]:
    """The mean log-probabilities of ``target_new`` and ``target_true`` behind `decisions`."""
    return [item[side]["mean"] for lt in LANGS for key in ("es", "ps") for item in scores[lt][key]
            for side in ("new", "true")]


# --------------------------------------------------------------------------- options


def test_device_names_resolve_and_cuda_is_refused_without_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    assert devices.is_device_name("cuda:3") and not devices.is_device_name("gpu")
    with pytest.raises(DeviceError, match="'cuda' and device map 'auto' exclude each other"):
        devices.check_device_map("auto", device="cuda")
    devices.check_device_map("auto", device="cpu")
    if not CUDA:
        with pytest.raises(DeviceError, match="device 'cuda:1' asked, but CUDA is not available"):
            resolve_device("cuda:1")


def test_load_model_places_the_model_as_asked(model_dir):
    plain, _ = load_model(model_dir, device="cpu")
    auto, _ = load_model(model_dir, device="auto")
    mapped, _ = load_model(model_dir, device_map=block_map(plain))
    assert {p.device for p in plain.parameters()} == {torch.device("cpu")}
    assert input_device(auto) == resolve_device("auto")
    assert model_fingerprint(mapped) == model_fingerprint(plain) == model_fingerprint(auto.cpu())
    assert not plain.training and not mapped.training and not any(p.requires_grad for p in mapped.parameters())
    with pytest.raises(DeviceError, match="exclude each other"):
        load_model(model_dir, device="cuda", device_map="auto")


def test_a_device_map_that_offloads_is_refused(model_dir):
    plain, _ = load_model(model_dir)
    offloading = {**block_map(plain), f"{arch_spec(plain).layers}.1": "disk"}
    with pytest.raises(DeviceError, match=r"offloads model\.layers\.1 to the CPU or disk"):
        load_model(model_dir, device_map=offloading)


@pytest.mark.parametrize("command", ["edit", "neurons", "bench", "downstream", "demo", "stats", "train-mend", "info"])
def test_every_model_command_documents_the_device_options(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert "--device {cpu,cuda,cuda:N,auto}" in help_text and "--device-map {auto}" in help_text
    assert "--dtype" in help_text


def test_info_runs_on_an_explicit_and_an_automatic_device(model_dir, capsys):
    assert main(["info", "--model", model_dir, "--device", "cpu"]) == 0
    assert "devices │ cpu" in " ".join(capsys.readouterr().out.split())
    assert main(["info", "--model", model_dir, "--device", "auto"]) == 0
    assert f"devices │ {resolve_device('auto').type}" in " ".join(capsys.readouterr().out.split())
    assert main(["info", "--model", model_dir, "--device-map", "auto"]) == 0


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_line_before_the_model_loads(device, tmp_path, capsys):
    # the model path does not exist: a check after loading would report that instead
    status = main(["edit", "--prompt", "The capital of {} is", "--subject", "France", "--new", "Rome",
                   "--model", str(tmp_path / "no-such-model"), "--device", device])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"memla edit: error: device {device!r} asked, but CUDA is not available here "
                                        f"(torch {torch.__version__}, a CPU-only build); use cpu or auto"]


def test_device_with_device_map_and_a_bad_name_exit_2(tmp_path, capsys):
    status = main(["info", "--model", str(tmp_path / "none"), "--device", "cuda:0", "--device-map", "auto"])
    assert status == 2 and "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["info", "--device", "gpu"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "argument --device: expected cpu, cuda, cuda:N or auto, got 'gpu'" in err


# --------------------------------------------------------------------------- split models


def test_module_and_input_devices_of_a_split_model():
    model, _ = tiny_model("gpt2")
    split = dispatched(model, block_map(model))
    assert not is_split(split)  # a map onto one device
    split.hf_device_map = {**split.hf_device_map, "lm_head": 1}
    assert is_split(split)
    assert input_device(split) == module_device(split.transformer.h[1]) == torch.device("cpu")
    with pytest.raises(ValueError, match="holds no parameters"):
        module_device(split.transformer.drop)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ["bloom", "gemma3_text"])
def test_split_model_edits_and_scores_as_the_whole_model(arch, method, tmp_path, monkeypatch):
    record = as_records(small_records())[0]
    whole, tok = tiny_model(arch)
    split, _ = tiny_model(arch)
    split = dispatched(split, block_map(split))
    before = model_fingerprint(split)

    monkeypatch.setattr(tokens, "is_split", lambda model: model is split)  # the multi-device path, on the CPU
    result_s, scores_s, after = edit_and_evaluate(split, tok, method, record, tmp_path / "split", monkeypatch)
    result_w, scores_w, _ = edit_and_evaluate(whole, tok, method, record, tmp_path / "whole", monkeypatch)

    assert after == before  # restore is exact
    assert result_s.prefix == result_w.prefix and set(result_s.deltas) == set(result_w.deltas)
    for name, delta in result_w.deltas.items():
        torch.testing.assert_close(result_s.deltas[name], delta, rtol=1e-4, atol=1e-5)
    assert decisions(scores_s) == decisions(scores_w)
    assert means(scores_s) == pytest.approx(means(scores_w), rel=1e-4, abs=1e-5)


def test_split_forward_selects_the_same_positions(monkeypatch):
    """The kept-columns path of `memla.tokens.forward` gives the logits of a boolean ``logits_to_keep``."""
    model, tok = tiny_model("gemma3_text")
    seqs = [tokens.encode_text(tok, t) for t in ("The capital of France is Paris", "Rome", "日本的首都是东京")]
    ids, mask, pos = tokens.left_pad(seqs, pad_id=tokens.pad_id(tok), device="cpu")
    keep = mask.bool() & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    keep[:, -1] = True
    with torch.no_grad():
        plain = tokens.forward(model, ids, mask, pos, logits_to_keep=keep).logits  # (N, V)
        monkeypatch.setattr(tokens, "is_split", lambda _: True)
        kept = tokens.forward(model, ids, mask, pos, logits_to_keep=keep).logits  # (N, V)
    assert kept.shape == plain.shape == (int(keep.sum()), model.config.vocab_size)
    torch.testing.assert_close(kept, plain, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_edit_and_evaluate(method, model_dir, tmp_path, monkeypatch):
    """An edit on the GPU: deltas on their weights' device, exact restore, and the CPU's ES/PS decisions."""
    record = as_records(small_records())[0]
    cuda, tok = load_model(model_dir, device="cuda")
    cpu, _ = load_model(model_dir, device="cpu")
    before = model_fingerprint(cuda)
    result_g, scores_g, after = edit_and_evaluate(cuda, tok, method, record, tmp_path / "cuda", monkeypatch)
    _, scores_c, _ = edit_and_evaluate(cpu, tok, method, record, tmp_path / "cpu", monkeypatch)
    assert after == before
    for name, delta in result_g.deltas.items():
        assert delta.device == cuda.get_parameter(name).device
    assert all(math.isfinite(m) for m in means(scores_g))
    agree = sum(a == b for a, b in zip(decisions(scores_g), decisions(scores_c))) / len(decisions(scores_c))
    assert agree >= 0.9, f"{agree:.2f} of the ES/PS decisions agree with the CPU's"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_decisions_agree_with_cpu_fp32(dtype, model_dir):
    """ES/PS decisions of the unedited model: GPU fp32 equals CPU fp32; bf16 agrees on nearly all."""
    records = as_records(small_records())
    cpu, tok = load_model(model_dir, device="cpu")
    cuda, _ = load_model(model_dir, device="cuda", dtype=dtype)
    ref = [d for r in records for d in decisions(evaluate_record(cpu, tok, r, LANGS))]
    got = [d for r in records for d in decisions(evaluate_record(cuda, tok, r, LANGS))]
    agree = sum(a == b for a, b in zip(ref, got)) / len(ref)
    assert agree == 1.0 if dtype == torch.float32 else agree >= 0.8, f"{agree:.2f} of {len(ref)} decisions agree"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("method", ["memla-local", "rome", "memit", "pmet"])
def test_model_split_over_two_gpus_edits_as_on_one(method, model_dir, tmp_path, monkeypatch):
    """The second block, the final norm and the (untied) LM head on cuda:1: edits and scores as on cuda:0 alone."""
    record = as_records(small_records())[0]
    one, tok = load_model(model_dir, device="cuda:0")
    two, _ = load_model(model_dir, device_map=block_map(one, 0, last=1))
    assert is_split(two) and len(devices.model_devices(two)) == 2
    before = model_fingerprint(two)
    result_2, scores_2, after = edit_and_evaluate(two, tok, method, record, tmp_path / "two", monkeypatch)
    result_1, scores_1, _ = edit_and_evaluate(one, tok, method, record, tmp_path / "one", monkeypatch)
    assert after == before
    for name, delta in result_1.deltas.items():
        torch.testing.assert_close(result_2.deltas[name].to(delta.device), delta, rtol=1e-3, atol=1e-4)
    assert decisions(scores_2) == decisions(scores_1)
    assert means(scores_2) == pytest.approx(means(scores_1), rel=1e-3, abs=1e-4)
