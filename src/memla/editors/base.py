"""The editor contract: requests, results, the registry, and exact apply/restore.

An editor turns an `EditRequest` (one fact in the source language ``ls``) into an
`EditResult`: weight deltas in each parameter's own layout (and, for IKE, a
prompt prefix).  Editors never change the caller's model; weights change only
inside ``with apply(model, result):`` (restored bitwise in ``finally``) or through
the explicit, permanent ``apply_(model, result)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from memla.config import load_config
from memla.errors import EditError
from memla.langs import is_known


@dataclass(frozen=True)
class EditRequest:
    """One fact to edit, in the source language ``lang`` (= ``ls``).

    Attributes:
        prompt: the edit prompt with one ``{}`` for the subject, e.g. "The capital of {} is".
        subject: the subject, e.g. "France" (may be ``None`` only when ``templated`` is False).
        target_new: the new object, e.g. "Rome".
        target_true: the current object, e.g. "Paris" (``None`` when unknown).
        lang: ISO code of the source language.
        paraphrases: complete paraphrase prompts (subject written in), optional.
        translations: the same fact in other languages, ``{lang: EditRequest}``; used
            only to locate language-independent neurons (and to show the effect).
        templated: ``False`` for question-form prompts without ``{}`` (the subject
            position is unknown; methods that need it fall back or skip).
        record_id: the dataset record this request came from, if any.
    """

    prompt: str
    subject: str | None
    target_new: str
    target_true: str | None = None
    lang: str = "en"
    paraphrases: tuple[str, ...] = ()
    translations: Mapping[str, EditRequest] = field(default_factory=dict)
    templated: bool = True
    record_id: Any = None

    def __post_init__(self) -> None:
        where = f"edit request ({self.lang}{'' if self.record_id is None else f', record {self.record_id}'})"
        if self.templated and self.prompt.count("{}") != 1:
            raise EditError(f"{where}: the prompt must contain exactly one '{{}}' for the subject: {self.prompt!r}")
        if not self.prompt.strip():
            raise EditError(f"{where}: empty prompt")
        if (self.subject is None or not self.subject.strip()) and (self.templated or self.subject is not None):
            raise EditError(f"{where}: empty subject")
        if not self.target_new.strip():
            raise EditError(f"{where}: empty target_new")
        if self.target_true is not None and not self.target_true.strip():
            raise EditError(f"{where}: empty target_true")
        if self.target_true is not None and self.target_new.strip() == self.target_true.strip():
            raise EditError(f"{where}: target_new equals target_true ({self.target_new!r})")
        if not is_known(self.lang):
            raise EditError(f"{where}: unknown language code {self.lang!r}")
        object.__setattr__(self, "paraphrases", tuple(self.paraphrases))

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject) if self.templated else self.prompt

    @property
    def langs(self) -> tuple[str, ...]:
        """The source language followed by the translation languages."""
        return (self.lang, *(k for k in self.translations if k != self.lang))

    def among(self, wanted: Sequence[str]) -> list[str]:
        """The source language first, then those of ``wanted`` this request has (``("all",)``: every one)."""
        wanted = self.langs if tuple(wanted) == ("all",) else wanted
        return [self.lang, *(k for k in wanted if k != self.lang and k in self.langs)]

    def in_lang(self, lang: str) -> EditRequest:
        """This fact in ``lang`` (the request itself for the source language)."""
        if lang == self.lang:
            return self
        try:
            return self.translations[lang]
        except KeyError:
            raise EditError(f"the edit request has no {lang!r} version; it has {', '.join(self.langs)}") from None

    @classmethod
    def from_record(cls, record, ls: str, *, langs=None) -> EditRequest:
        """The request for ``record`` edited in ``ls``, with its other languages as translations.

        Args:
            record: a `memla.data.Record`.
            ls: source language.
            langs: languages to attach as translations (default: all the record has).
        """
        if ls not in record.edit:
            raise EditError(f"record {record.example_id} has no {ls!r} edit prompt")

        def one(lang: str) -> EditRequest:
            fact = record.edit[lang]
            return cls(
                prompt=fact.prompt,
                subject=fact.subject,
                target_new=fact.target_new,
                target_true=fact.target_true,
                lang=lang,
                paraphrases=tuple(record.paraphrase_prompts.get(lang, ())),
                templated=record.templated,
                record_id=record.example_id,
            )

        wanted = record.langs if langs is None else [k for k in langs if k in record.edit]
        source = one(ls)
        return dataclasses.replace(source, translations={k: one(k) for k in wanted if k != ls})


@dataclass(frozen=True)
class EditResult:
    """What an editor produced.

    Attributes:
        deltas: parameter name -> ΔW in the parameter's own layout (may be empty).
        prefix: IKE's in-context demonstrations, prepended to every prompt ("" for weight editors).
        info: losses, steps, neurons, timings (JSON-serialisable values).
    """

    deltas: Mapping[str, torch.Tensor] = field(default_factory=dict)
    prefix: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Editor(Protocol):
    """An editing method: ``edit(model, tokenizer, request) -> EditResult``."""

    name: str

    def edit(self, model: nn.Module, tokenizer, request: EditRequest) -> EditResult: ...


@runtime_checkable
class SequenceEditor(Protocol):
    """An editor that takes the earlier edits of a sequential run into account (memla-local).

    ``with editor.sequence():`` opens a run (`memla.evaluate.sequential.edit_sequentially`);
    each edit made inside it may protect the ones made before it.  Outside the block the
    editor keeps no state between edits, so independent edits never see each other.
    """

    def sequence(self) -> AbstractContextManager[None]: ...


@runtime_checkable
class BatchEditor(Protocol):
    """An editor that also edits several requests in one update (MEMIT, PMET).

    ``isinstance(editor, BatchEditor)`` tells whether an editor has batched edits.
    """

    def edit_batch(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> EditResult: ...


# --------------------------------------------------------------------------- apply / restore


def _check_deltas(model: nn.Module, result: EditResult) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    out = {}
    for name, delta in result.deltas.items():
        if name not in params:
            raise EditError(f"edit result names unknown parameter {name!r}")
        if tuple(delta.shape) != tuple(params[name].shape):
            raise EditError(f"delta for {name} has shape {tuple(delta.shape)}, parameter has {tuple(params[name].shape)}")
        out[name] = params[name]
    return out


def _added(param: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``W + ΔW`` computed in fp32, returned in W's dtype and device."""
    return (param.detach().float() + delta.detach().to(param.device).float()).to(param.dtype)


@contextmanager
def substituted(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Give the named parameters these tensors inside a ``with`` block; restore the exact originals on exit.

    The original tensors themselves are put back (no arithmetic), so restore is
    bitwise exact, also when the block raises.
    """
    params = dict(model.named_parameters())
    originals = {}
    try:
        for name, data in tensors.items():
            originals[name] = params[name].data
            params[name].data = data
        yield model
    finally:
        for name, data in originals.items():
            params[name].data = data


@contextmanager
def apply(model: nn.Module, result: EditResult) -> Iterator[nn.Module]:
    """Apply an edit's deltas inside a ``with`` block; restore the exact originals on exit (`substituted`)."""
    params = _check_deltas(model, result)
    with substituted(model, {name: _added(param, result.deltas[name]) for name, param in params.items()}):
        yield model


def apply_(model: nn.Module, result: EditResult) -> nn.Module:
    """Apply an edit's deltas permanently (in place)."""
    for name, param in _check_deltas(model, result).items():
        param.data = _added(param, result.deltas[name])
    return model


@contextmanager
def pristine(model: nn.Module) -> Iterator[nn.Module]:
    """Snapshot every parameter and put the exact tensors back on exit (for sequential edits)."""
    saved = {name: p.data for name, p in model.named_parameters()}
    try:
        yield model
    finally:
        for name, p in model.named_parameters():
            p.data = saved[name]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EditorEntry:
    """A registered method: its editor class and its config dataclass.

    ``edits_weights`` is False for methods whose edit is a prompt (IKE): they have
    nothing to save as an adapter.
    """

    name: str
    editor_cls: type
    config_cls: type
    summary: str
    edits_weights: bool = True


_REGISTRY: dict[str, EditorEntry] = {}
_DISCOVERED = False


def register_editor(name: str, *, config: type, summary: str = "", edits_weights: bool = True):
    """Class decorator registering an editor under ``name`` with its config class."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name].editor_cls is not cls:
            raise ValueError(f"editor {name!r} registered twice")
        _REGISTRY[name] = EditorEntry(name, cls, config, summary or (cls.__doc__ or "").strip().splitlines()[0],
                                      edits_weights)
        cls.name = name
        return cls

    return deco


def _discover() -> None:
    """Import every module of this package (memla.editors) once so that their decorators run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")
    _DISCOVERED = True


def registry() -> dict[str, EditorEntry]:
    """All registered editors, by name."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def editor_entry(name: str) -> EditorEntry:
    """The registry entry of ``name``; unknown names list the known ones and the closest match."""
    entries = registry()
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EditError(f"unknown method {name!r}{hint}; known methods: {', '.join(entries)}")
    return entries[name]


def get_editor(name: str, config=None):
    """An editor instance of method ``name``.

    Args:
        name: registry name (e.g. ``"memla"``).
        config: ``None`` (defaults), a dict, a YAML/JSON path, or a config instance.
    """
    entry = editor_entry(name)
    return entry.editor_cls(load_config(entry.config_cls, config))
