"""The key-value editing core that ROME, MEMIT and PMET share (and an AlphaEdit-style projection can).

A locate-then-edit method treats an MLP down-projection ``W`` as a key-value memory
``W k ≈ v``: the key ``k`` is its input at the subject's last token, the value ``v`` its
output.  One edit is four steps, one module each:

1. **Locate k*** (`memla.editors.kv.keys`): the subject's last token (`locate_request`),
   model-generated context prefixes (`context_prefixes`, ROME Eq. 3), teacher-forced rows
   (`rewriting_rows`, `kl_rows`), the keys there (`capture`) and their average (`group_mean`).
2. **Optimise v*** (`memla.editors.kv.values`): `optimise_targets` (ROME Eq. 4, MEMIT
   Eq. 16, PMET Eq. 9) through a cached-prefix forward (`TargetRunner`).
3. **Closed-form update** (`memla.editors.kv.updates`): `rank_one_update` (ROME Eq. 2),
   `memit_update` (MEMIT Eq. 14), and the map through a post-FFN norm (`residual_to_down`).
4. **Covariance statistics** (`memla.editors.kv.stats`): ``C = E[k kᵀ]`` per layer from a
   corpus, cached (`layer_stats`, `covariances`).

`memla.editors.kv.config` holds the settings the methods share (`KeyValueConfig`).
"""

from memla.editors.kv.config import GPTJ_D_FF, KeyValueConfig, layer_covariances, optimise_options
from memla.editors.kv.keys import (
    ROME_SEEDS,
    Located,
    Row,
    capture,
    context_prefixes,
    group_mean,
    kl_rows,
    locate,
    locate_request,
    prefix_groups,
    rewriting_rows,
    subject_span,
)
from memla.editors.kv.stats import Corpus, LayerStats, covariances, layer_stats, resolve_corpus
from memla.editors.kv.updates import (
    down_to_residual,
    down_weight_and_bias,
    memit_update,
    rank_one_update,
    residual_to_down,
)
from memla.editors.kv.values import TargetResult, TargetRunner, head_logits, optimise_targets

__all__ = [
    "GPTJ_D_FF",
    "ROME_SEEDS",
    "Corpus",
    "KeyValueConfig",
    "LayerStats",
    "Located",
    "Row",
    "TargetResult",
    "TargetRunner",
    "capture",
    "context_prefixes",
    "covariances",
    "down_to_residual",
    "down_weight_and_bias",
    "group_mean",
    "head_logits",
    "kl_rows",
    "layer_covariances",
    "layer_stats",
    "locate",
    "locate_request",
    "memit_update",
    "optimise_options",
    "optimise_targets",
    "prefix_groups",
    "rank_one_update",
    "residual_to_down",
    "resolve_corpus",
    "rewriting_rows",
    "subject_span",
]
