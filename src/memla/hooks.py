"""Forward hooks as context managers: read or replace module inputs and outputs.

All hooks are registered on entry and removed in ``finally``, so no state is left
on the model after the ``with`` block, also when it raises.

Example::

    with trace(model, ["model.layers.3.mlp.down_proj"], retain_input=True) as tr:
        model(input_ids)
    x = tr["model.layers.3.mlp.down_proj"].input   # (B, T, d_ff)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

EditFn = Callable[[Any, str], Any]


class StopForward(Exception):
    """Raised by a hook to end the forward pass early (``stop=True``)."""


@dataclass
class Trace:
    """What was captured at one module: its first positional input and its output."""

    input: torch.Tensor | None = None
    output: Any = None


def output_tensor(output: Any) -> torch.Tensor:
    """A module output's hidden states: the output itself, or the first element of a tuple (decoder blocks)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def trace(
    model: nn.Module,
    names: str | Sequence[str],
    *,
    retain_input: bool = False,
    retain_output: bool = True,
    edit: EditFn | None = None,
    edit_input: EditFn | None = None,
    stop: bool = False,
    detach: bool = False,
) -> Iterator[dict[str, Trace]]:
    """Trace (and optionally edit) the inputs and outputs of named modules.

    Args:
        model: the model.
        names: module paths (as in ``model.named_modules()``).
        retain_input: keep each module's first positional input (after ``edit_input``).
        retain_output: keep each module's output (after ``edit``).
        edit: ``edit(output, name) -> output`` replaces a module's output.
        edit_input: ``edit_input(input, name) -> input`` replaces a module's first
            positional input, through a forward pre-hook.
        stop: end the forward pass (raise `StopForward`, swallowed on exit of the
            ``with``) after the last of ``names`` in module order has run.
        detach: store detached tensors.

    Returns:
        A context manager yielding ``{name: Trace}``.
    """
    if isinstance(names, str):
        names = [names]
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"modules not found: {', '.join(missing)}")
    order = {name: i for i, name in enumerate(modules)}
    last = max(names, key=order.__getitem__) if names else None
    traces = {name: Trace() for name in names}
    handles = []

    def keep(x):
        return x.detach() if detach and isinstance(x, torch.Tensor) else x

    def make_pre_hook(name: str):
        def pre_hook(module, args):
            if not args:
                return None
            x = args[0]
            if edit_input is not None:
                x = edit_input(x, name)
            if retain_input:
                traces[name].input = keep(x)
            return (x, *args[1:]) if edit_input is not None else None

        return pre_hook

    def make_hook(name: str):
        def hook(module, args, output):
            if edit is not None:
                output = edit(output, name)
            if retain_output:
                traces[name].output = keep(output)
            if stop and name == last:
                raise StopForward
            return output

        return hook

    try:
        for name in names:
            module = modules[name]
            if retain_input or edit_input is not None:
                handles.append(module.register_forward_pre_hook(make_pre_hook(name)))
            handles.append(module.register_forward_hook(make_hook(name)))
        try:
            yield traces
        except StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()
