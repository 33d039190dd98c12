"""trace(): retained inputs/outputs, edits, stop, and hooks removed after exceptions."""

from __future__ import annotations

import pytest
import torch

from memla.hooks import trace
from memla.models import arch_spec


def _ids(tok):
    return tok("The capital of France is", return_tensors="pt").input_ids


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_outputs_and_inputs_retained(tiny):
    model, tok = tiny
    spec = arch_spec(model)
    name = spec.path(spec.mlp_down, 0)
    with trace(model, [name], retain_input=True) as tr:
        model(_ids(tok))
    down = model.get_submodule(name)
    assert torch.allclose(down(tr[name].input), tr[name].output, atol=1e-6)


def test_edit_changes_output(tiny):
    model, tok = tiny
    spec = arch_spec(model)
    name = spec.path(spec.mlp_down, 1)
    with torch.no_grad():
        clean = model(_ids(tok)).logits
        with trace(model, name, edit=lambda out, _: out * 0):
            edited = model(_ids(tok)).logits
        again = model(_ids(tok)).logits
    assert not torch.allclose(clean, edited)
    assert torch.equal(clean, again)


def test_edit_input_pre_hook(tiny):
    model, tok = tiny
    spec = arch_spec(model)
    name = spec.path(spec.mlp_down, 0)
    with trace(model, name, edit_input=lambda x, _: torch.zeros_like(x), retain_input=True) as tr:
        model(_ids(tok))
    assert torch.count_nonzero(tr[name].input) == 0


def test_hooks_removed_after_exception(tiny):
    model, tok = tiny
    spec = arch_spec(model)
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with trace(model, [spec.path(spec.mlp_down, 0), spec.path(spec.mlp_down, 1)], retain_input=True):
            model(_ids(tok))
            assert _hook_count(model) > before
            raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_stop_ends_forward_after_last_traced_module(tiny):
    model, tok = tiny
    spec = arch_spec(model)
    first = spec.path(spec.mlp_down, 0)
    reached = []
    with trace(model, spec.final_norm, edit=lambda out, name: reached.append(name) or out, retain_output=False):
        with trace(model, first, stop=True) as tr:
            model(_ids(tok))
            reached.append("after forward")  # not reached: the forward pass was stopped
    assert tr[first].output is not None
    assert reached == []


def test_unknown_module_name_raises(tiny):
    model, _ = tiny
    with pytest.raises(KeyError, match="not.a.module"):
        with trace(model, "not.a.module"):
            pass
