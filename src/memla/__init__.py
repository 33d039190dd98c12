"""memla: multilingual knowledge editing of language models.

MEMLA (Xie et al., 2024) locates knowledge neurons per language with integrated
gradients, then edits the MLP down-projections with neuron-masked LoRA.  This
package holds the method, the baselines, the MKEB-style benchmark and its
metrics.
"""

__version__ = "0.1.0"

from memla.models import ArchSpec, arch_spec, load_model  # noqa: E402

__all__ = ["ArchSpec", "arch_spec", "load_model", "__version__"]
