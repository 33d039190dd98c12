"""The closed-form weight updates of ROME and MEMIT, and the map through a post-FFN norm.

* `rank_one_update` (ROME Eq. 2) and `memit_update` (MEMIT Eq. 14), in float64, in the
  ``nn.Linear`` orientation ``(d_model, d_ff)``; ``ArchSpec.from_linear`` turns them into
  the parameter's own layout.
* `residual_to_down` / `down_to_residual`: for architectures with a post-FFN norm
  (Gemma 2/3) a residual-stream target is mapped to the down-projection output through
  the norm's Jacobian (pseudo-inverse; the norm is scale-invariant, so the component
  along v is free), and back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memla.models import arch_spec, get_module


def down_weight_and_bias(model: nn.Module, layer: int) -> tuple[Tensor, Tensor | None]:
    """Layer ``layer``'s down-projection as float ``(W (d_model, d_ff), bias (d_model,) or None)``."""
    spec = arch_spec(model)
    module = spec.down_module(model, layer)
    w = spec.to_linear(module.weight.detach().float())  # (d_model, d_ff)
    return w, (None if module.bias is None else module.bias.detach().float())


def rank_one_update(v_star: Tensor, w_k: Tensor, k_num: Tensor, k_den: Tensor, C: Tensor | None) -> Tensor:
    """ROME's rank-one update (ROME Eq. 2): ``Δ = (v* − W k) (C⁻¹ k_num)ᵀ / ((C⁻¹ k_num)ᵀ k_den)``.

    Args:
        v_star: the target value v* ``(d_model,)``.
        w_k: the current value ``W k_den`` ``(d_model,)``.
        k_num: key of the direction ``C⁻¹ k`` ``(d_ff,)``.
        k_den: key the update must map to v* ``(d_ff,)`` (r-ROME: ``k_num = k_den``).
        C: the key covariance ``E[k kᵀ]`` ``(d_ff, d_ff)``, or None for the identity.

    Returns:
        ``Δ`` ``(d_model, d_ff)`` in float64 (``(W + Δ) k_den = v*``).
    """
    k_num, k_den = k_num.double(), k_den.double()
    u = k_num if C is None else torch.linalg.solve(C.double(), k_num)  # (d_ff,)
    return torch.outer(v_star.double() - w_k.double(), u) / (u @ k_den)


def memit_update(R: Tensor, K: Tensor, C: Tensor, lam: float) -> Tensor:
    """MEMIT's batch update (MEMIT Eq. 14): ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹`` in float64.

    Args:
        R: residuals ``(d_model, n)``.
        K: keys ``(d_ff, n)``.
        C: key covariance ``E[k kᵀ]`` ``(d_ff, d_ff)``.
        lam: λ, the weight of the preserved keys (``mom2_update_weight``).

    Returns:
        ``Δ`` ``(d_model, d_ff)``.
    """
    K, R = K.double(), R.double()
    A = lam * C.double() + K @ K.T  # (d_ff, d_ff), symmetric positive definite
    return torch.linalg.solve(A, K @ R.T).T  # (d_model, d_ff)


def residual_to_down(model: nn.Module, layer: int, v: Tensor, r: Tensor) -> Tensor:
    """Map residual-stream changes to down-projection output changes of ``layer`` (Gemma 2/3).

    With a post-FFN norm the block adds ``n(v)`` (not ``v``) to the residual stream, so the
    change ``r`` wanted there is reached, to first order, by ``Δv = J⁺ r`` with ``J = ∂n/∂v``
    at the current output ``v``.  Without a post-FFN norm ``Δv = r``.

    Args:
        model: the model.
        layer: the edited layer.
        v: current down-projection outputs, ``(d_model, N)``.
        r: wanted residual changes, ``(d_model, N)``.

    Returns:
        ``Δv``, ``(d_model, N)`` in float64, on ``v``'s device (the layer's; ``r`` may come from another).
    """
    spec = arch_spec(model)
    r = r.to(v.device)
    if spec.post_ffn_norm is None:
        return r.double()
    norm = get_module(model, spec.path(spec.post_ffn_norm, layer))
    cols = []
    for j in range(v.shape[1]):
        vj = v[:, j].to(next(norm.parameters()).dtype)
        jac = torch.autograd.functional.jacobian(
            lambda x: norm(x[None])[0].float(), vj, vectorize=True).double()  # (d, d)
        # The radial singular value is 0 up to float32 noise (the norm is scale-invariant): cut it.
        cols.append(torch.linalg.pinv(jac, rtol=1e-4) @ r[:, j].double())  # (d,)
    return torch.stack(cols, dim=1)


def down_to_residual(model: nn.Module, layer: int, v: Tensor, v_new: Tensor) -> Tensor:
    """The residual-stream change when the down-projection output moves from ``v`` to ``v_new`` ``(d, N)``."""
    spec = arch_spec(model)
    if spec.post_ffn_norm is None:
        return (v_new - v).double()
    norm = get_module(model, spec.path(spec.post_ffn_norm, layer))
    with torch.no_grad():
        return (norm(v_new.T.float()) - norm(v.T.float())).T.double()
