"""memla: multilingual knowledge editing of language models.

MEMLA (Xie et al., 2024) locates knowledge neurons per language with integrated
gradients, then edits the MLP down-projections with neuron-masked LoRA.  This
package holds the method, the baselines, the MKEB-style benchmark and its
metrics.
"""

__version__ = "0.1.0"

__all__ = ["ArchSpec", "arch_spec", "load_model", "__version__"]


def __getattr__(name: str):
    # Lazy: importing memla (e.g. for `memla --help`) must not import torch.
    if name in ("ArchSpec", "arch_spec", "load_model"):
        from memla import models

        return getattr(models, name)
    raise AttributeError(f"module 'memla' has no attribute {name!r}")
