"""Identity adapters for diffusers pipelines, and safe checkpoint reading.

Public names are imported on first use, so ``adapters.checkpoint`` stays light for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "AttentionCallState": "adapters.stack",
    "Contribution": "adapters.stack",
    "ContributionInput": "adapters.stack",
    "PortraitAttnProcessor": "adapters.stack",
    "Stage": "adapters.stack",
    "IdentityContribution": "adapters.attention",
    "IdentityAdapterMixin": "adapters.loader",
    "IdentityAdapterError": "adapters.formats",
    "IdentityAttnProcessor": "adapters.attention",
    "IdentityAttention": "adapters.attention",
    "FaceIDProjection": "adapters.projections",
    "FaceIDPlusProjection": "adapters.projections",
    "IdentityResampler": "adapters.projections",
    "WPlusAdapterMixin": "adapters.wplus_loader",
    "WPlusAttention": "adapters.wplus",
    "WProjection": "adapters.wplus",
    "write_checkpoint": "adapters.synthetic",
    "write_identitynet": "adapters.synthetic",
}

__all__ = [
    "AttentionCallState",
    "Contribution",
    "ContributionInput",
    "FaceIDPlusProjection",
    "FaceIDProjection",
    "IdentityAdapterError",
    "IdentityAdapterMixin",
    "IdentityAttention",
    "IdentityAttnProcessor",
    "IdentityContribution",
    "IdentityResampler",
    "PortraitAttnProcessor",
    "Stage",
    "WPlusAdapterMixin",
    "WPlusAttention",
    "WProjection",
    "write_checkpoint",
    "write_identitynet",
]

if TYPE_CHECKING:
    from adapters.attention import (
        IdentityAttention,
        IdentityAttnProcessor,
        IdentityContribution,
    )
    from adapters.formats import IdentityAdapterError
    from adapters.loader import IdentityAdapterMixin
    from adapters.projections import FaceIDPlusProjection, FaceIDProjection, IdentityResampler
    from adapters.stack import (
        AttentionCallState,
        Contribution,
        ContributionInput,
        PortraitAttnProcessor,
        Stage,
    )
    from adapters.synthetic import write_checkpoint, write_identitynet
    from adapters.wplus import WPlusAttention, WProjection
    from adapters.wplus_loader import WPlusAdapterMixin


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
