"""Diffusers pipelines of the studio: identity-preserving portraits on SD1.5 and SDXL."""

from pipelines.portrait import PortraitPipeline
from pipelines.portrait_inpaint import PortraitInpaintPipeline
from pipelines.portrait_xl import PortraitXLPipeline
from pipelines.portrait_xl_inpaint import PortraitXLInpaintPipeline

__all__ = [
    "PortraitInpaintPipeline",
    "PortraitPipeline",
    "PortraitXLInpaintPipeline",
    "PortraitXLPipeline",
]
