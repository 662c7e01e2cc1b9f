"""Gradient-level multi-task methods: combine per-task gradients into one update.

Each method is a :class:`GradientAggregator` in its own module. The model stacks the per-task
gradients of the shared parameters (or, for ``works_on == "representation"``, of the shared
representation) into a ``[T, P]`` matrix and calls :meth:`GradientAggregator.aggregate`, which
returns the ``[T]`` weights of the update ``direction = weights @ G`` (:func:`combine`, formed only
on request: training back-propagates ``sum_t w_t L_t`` instead). All but Nash-MTL are
:class:`GramianAggregator` s: "Gramian -> weights", as torchjd's ``Weighting``.

Scale conventions differ between the papers and are kept: PCGrad and Aligned-MTL sum (weights
around 1 each), CAGrad, UPGrad and Nash-MTL are mean-like, MGDA and IMTL-G give weights summing
to 1.

=============  =====================================  ============================
class          paper                                  module
=============  =====================================  ============================
PCGrad         Yu et al. 2020 (NeurIPS)               ``pcgrad``
CAGrad         Liu et al. 2021 (NeurIPS)              ``cagrad``
MGDA, MGDAUB   Sener & Koltun 2018 (NeurIPS)          ``mgda``
IMTLG          Liu et al. 2021 (ICLR)                 ``imtl_g``
AlignedMTL     Senushkin et al. 2023 (CVPR)           ``aligned_mtl``
UPGrad         Quinton & Rey 2024, via torchjd        ``torchjd_aggregators``
NashMTL        Navon et al. 2022 (ICML), via torchjd  ``torchjd_aggregators``
=============  =====================================  ============================
"""

from mtlkit.weighting.gradient.aligned_mtl import AlignedMTL
from mtlkit.weighting.gradient.base import (
    AggregatedGradient,
    GradientAggregator,
    GramianAggregator,
    combine,
    gram_matrix,
)
from mtlkit.weighting.gradient.cagrad import CAGrad
from mtlkit.weighting.gradient.imtl_g import IMTLG
from mtlkit.weighting.gradient.mgda import MGDA, MGDAUB
from mtlkit.weighting.gradient.min_norm import min_norm_point
from mtlkit.weighting.gradient.pcgrad import PCGrad
from mtlkit.weighting.gradient.torchjd_aggregators import NashMTL, UPGrad

__all__ = [
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "AggregatedGradient",
    "AlignedMTL",
    "CAGrad",
    "GradientAggregator",
    "GramianAggregator",
    "NashMTL",
    "PCGrad",
    "UPGrad",
    "combine",
    "gram_matrix",
    "min_norm_point",
]
