"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from mtlkit.weighting.gradient.base import GramianAggregator


class PCGrad(GramianAggregator):
    r"""PCGrad, Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (NeurIPS), Algorithm 1.

    For every task :math:`i`, starting from :math:`g_i^{PC} = g_i`, and for every other task
    :math:`j \ne i` taken in a uniformly random order:

    .. math::

        \text{if } g_i^{PC} \cdot g_j < 0: \quad
        g_i^{PC} \leftarrow g_i^{PC} - \frac{g_i^{PC} \cdot g_j}{\lVert g_j \rVert^2} g_j

    with :math:`g_j` the *original* (unprojected) gradient, as in the paper. The update is
    :math:`\Delta\theta = \sum_i g_i^{PC}` (the paper and LibMTL sum; ``reduction="mean"``
    divides by :math:`T`).

    Every :math:`g_i^{PC}` stays a linear combination of the original gradients, so the method is
    run on the Gram matrix with a coefficient matrix :math:`C` (:math:`g_i^{PC} = C_i G`,
    :math:`g_i^{PC} \cdot g_j = C_i\, (G G^\top)_{:, j}`); the reported weights are the exact
    effective coefficients :math:`w = \sum_i C_i`, so ``direction == w @ G``.

    The random order is drawn, for each :math:`i`, as a fresh permutation of the other tasks from
    :attr:`generator`, a CPU :class:`torch.Generator` seeded with ``seed`` whose state is saved in
    the module's ``state_dict``, so a resumed run continues the exact random stream. A projection
    onto a zero gradient is skipped.

    Args:
        reduction: ``"sum"`` (paper) or ``"mean"`` of the projected gradients.
        seed: Seed of the task-order generator.
    """

    def __init__(self, reduction: Literal["sum", "mean"] = "sum", seed: int = 0) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def get_extra_state(self) -> Any:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        t = gram.shape[0]
        coef = torch.eye(t, dtype=gram.dtype)
        sq_norms = gram.diagonal()
        for i in range(t):
            others = [j for j in range(t) if j != i]
            for k in torch.randperm(t - 1, generator=self.generator).tolist():
                j = others[k]
                dot = coef[i] @ gram[:, j]
                if dot < 0 and sq_norms[j] > 0:
                    coef[i, j] -= dot / sq_norms[j]
        weights = coef.sum(0)
        return weights / t if self.reduction == "mean" else weights
