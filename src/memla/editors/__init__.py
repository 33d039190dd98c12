"""Editing methods (MEMLA and baselines) behind one contract; see `memla.editors.base`.

Each method lives in its own module and registers itself with
``@register_editor(name, config=...)``; modules are discovered on first use of
the registry.
"""

from memla.editors.base import (
    BatchEditor,
    EditRequest,
    EditResult,
    Editor,
    SequenceEditor,
    apply,
    apply_,
    editor_entry,
    get_editor,
    pristine,
    register_editor,
    registry,
)

__all__ = [
    "BatchEditor",
    "EditRequest",
    "EditResult",
    "Editor",
    "SequenceEditor",
    "apply",
    "apply_",
    "editor_entry",
    "get_editor",
    "pristine",
    "register_editor",
    "registry",
]
