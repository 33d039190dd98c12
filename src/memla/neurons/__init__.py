"""Knowledge neurons: integrated-gradients attribution and per-language neuron sets (paper §4.1, Eq. 1–4).

- `attribute`: IG scores of the MLP intermediate neurons for P(target | prompt)
  (Eq. 1–2), by a fast path (prefix KV cache, per-layer entry, batched one-token
  rows; `memla.neurons.fast`) or the plain reference (`memla.neurons.reference`).
- `knowledge_neurons`: thresholded scores of several prompts, combined.
- `NeuronSet`: ``(layer, index)`` pairs with set algebra and a JSON round trip.
- `split_language_neurons`: language-independent ``I = ∩_k N^k`` (Eq. 3) and
  language-specific ``S = N^ls − I`` (Eq. 4).
- `locate`: all of it for one dataset record in several languages.
- A disk cache of scores (`memla.neurons.cache`) under ``cache_dir()/"neurons"``.
"""

from .attribution import attribute
from .locate import Located, knowledge_neurons, locate
from .sets import NeuronSet, split_language_neurons

__all__ = ["Located", "NeuronSet", "attribute", "knowledge_neurons", "locate", "split_language_neurons"]
