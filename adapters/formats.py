"""Published identity-adapter checkpoints: split, recognise, check against a UNet.

Pure functions over state dicts and a UNet's attention layout, and the published architectures as
small classes behind one protocol (:class:`Architecture`: recognise, read config, lay out, name
the family, feed the projection); nothing here builds a model.

Every published identity adapter (IP-Adapter-FaceID, FaceID-PlusV2, InstantID's ``ip-adapter.bin``)
has two halves:

- ``image_proj``: the projection from a face embedding to identity tokens, whose key names
  tell the architecture (MLP ``proj.0/proj.2/norm``; the same plus ``perceiver_resampler.*``;
  or a perceiver ``Resampler`` with ``latents``).
- ``ip_adapter``: per attention layer ``"{index}.to_k_ip.weight"`` / ``"{index}.to_v_ip.weight"``,
  where ``index`` is the layer's position in ``unet.attn_processors`` counting every attention
  processor, self-attention included (the reference loads them with
  ``nn.ModuleList(unet.attn_processors.values()).load_state_dict(...)``). In SD1.5/SDXL UNets
  self- and cross-attention alternate, so the cross-attention layers are the odd indices, as
  diffusers' ``_convert_ip_adapter_attn_to_diffusers`` assumes (it counts ``1, 3, 5, ...``).
  FaceID checkpoints also hold a rank-128 LoRA of every attention layer
  (``"{index}.to_{q,k,v,out}_lora.{down,up}.weight"``, self-attention layers included).

On disk the halves are either nested (``{"image_proj": {...}, "ip_adapter": {...}}``, the
published ``.bin`` files) or flat with ``image_proj.`` / ``ip_adapter.`` prefixes
(``.safetensors``).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from diffusers.models.modeling_utils import ModelMixin

from adapters.layout import AttentionLayer, attention_layers
from adapters.projections import FaceIDPlusProjection, FaceIDProjection, IdentityResampler

__all__ = [  # attention_layers is re-exported: the checkpoint layouts are read against it
    "ARCHITECTURES",
    "FACEID",
    "FACEID_PLUSV2",
    "INSTANTID",
    "AdapterSpec",
    "Architecture",
    "AttentionLayer",
    "IdentityAdapterError",
    "architecture",
    "attention_layers",
    "image_proj_layout",
    "inspect_checkpoint",
    "ip_adapter_layout",
    "match_unet",
    "split_checkpoint",
]

#: Width of the ArcFace embeddings every published identity adapter takes.
ARCFACE_DIM = 512
#: Width of the CLIP ViT-H image features FaceID-PlusV2 refines its tokens over.
CLIP_VIT_H_DIM = 1280
#: Token widths of the published base models; other widths are custom (e.g. tiny test) UNets.
PUBLISHED_BASES = {768: "SD1.5", 2048: "SDXL"}
#: The published perceivers use 64-wide attention heads (diffusers' converter assumes it too).
PERCEIVER_DIM_HEAD = 64
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")

_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_LORA_KEY = re.compile(r"^(\d+)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


class IdentityAdapterError(ValueError):
    """An identity adapter checkpoint or its inputs do not fit; the message says what would."""


@dataclass(frozen=True)
class AdapterSpec:
    """What a checkpoint is, read from its key names and tensor shapes."""

    architecture: str  #: ``faceid``, ``faceid-plusv2`` or ``instantid``
    token_dim: int  #: width of the identity tokens (the UNet's cross-attention dim)
    num_tokens: int
    ip_layers: tuple[int, ...]  #: indices that hold ``to_k_ip``/``to_v_ip``
    lora_layers: tuple[int, ...]  #: indices that hold FaceID LoRA weights
    lora_rank: int | None
    projection_config: dict = field(default_factory=dict)
    family: str | None = None  #: e.g. ``faceid-sd15``; set once the base model is known

    def summary(self) -> str:
        base = PUBLISHED_BASES.get(self.token_dim)
        base_text = f", an {base} checkpoint" if base else ""
        lora = f", FaceID LoRA rank {self.lora_rank}" if self.lora_rank else ""
        return (
            f"{self.architecture} adapter ({self.token_dim}-d identity tokens for "
            f"{len(self.ip_layers)} cross-attention layers{lora}{base_text})"
        )


class Architecture(ABC):
    """One published identity-adapter architecture: how to recognise, read, lay out and feed it.

    ``name`` is the :attr:`AdapterSpec.architecture` string; ``projection`` the class that loads
    its ``image_proj`` half; ``published_lora_rank`` the rank of the FaceID LoRA its published
    files carry (``None``: none); ``takes_clip_features``: its projection also reads CLIP image
    features; ``trained_on_raw_embeddings``: trained on insightface's raw ``face.embedding``, so a
    raw embedding is fed as is.
    """

    name: ClassVar[str]
    projection: ClassVar[type[ModelMixin]]
    published_lora_rank: ClassVar[int | None] = None
    takes_clip_features: ClassVar[bool] = False
    trained_on_raw_embeddings: ClassVar[bool] = False

    @abstractmethod
    def recognises(self, image_proj: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``image_proj``'s key names are this architecture's."""

    @abstractmethod
    def read_config(self, image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
        """The projection's config, read from the shapes (raises on inconsistent ones)."""

    @abstractmethod
    def image_proj_layout(self, config: Mapping) -> dict[str, tuple[int, ...]]:
        """Published ``image_proj`` key -> shape for a projection config."""

    @abstractmethod
    def published_config(self, token_dim: int, id_embed_dim: int = ARCFACE_DIM) -> dict:
        """The projection config its published checkpoint has for ``token_dim``-d tokens."""

    def family(self, *, sdxl: bool) -> str:
        """The family name a checkpoint of it for an SD1.5 or SDXL UNet loads as."""
        return f"{self.name}-{'sdxl' if sdxl else 'sd15'}"

    def projection_inputs(self, embeds: torch.Tensor) -> torch.Tensor:
        """The projection's input for unit-norm face embeddings (as it was trained)."""
        return embeds


class FaceID(Architecture):
    """IP-Adapter-FaceID: MLP ``proj.0/proj.2`` and ``norm``; a rank-128 LoRA on every layer."""

    name = "faceid"
    projection = FaceIDProjection
    published_lora_rank = 128

    def recognises(self, image_proj: Mapping[str, torch.Tensor]) -> bool:
        return {"proj.0.weight", "proj.2.weight", "norm.weight"} <= set(image_proj)

    def read_config(self, image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
        return _faceid_config(image_proj, source)

    def image_proj_layout(self, config: Mapping) -> dict[str, tuple[int, ...]]:
        width, hidden = config["cross_attention_dim"], config["hidden_dim"]
        return {
            **_linear("proj.0", hidden, config["id_embed_dim"]),
            **_linear("proj.2", width * config["num_tokens"], hidden),
            "norm.weight": (width,),
            "norm.bias": (width,),
        }

    def published_config(self, token_dim: int, id_embed_dim: int = ARCFACE_DIM) -> dict:
        return {
            "id_embed_dim": id_embed_dim,
            "hidden_dim": 2 * ARCFACE_DIM,
            "cross_attention_dim": token_dim,
            "num_tokens": 4,
        }


class FaceIDPlusV2(FaceID):
    """FaceID-PlusV2 (and Plus V1, same layout): FaceID plus ``perceiver_resampler.*`` over CLIP
    ViT-H features of the face crops."""

    name = "faceid-plusv2"
    projection = FaceIDPlusProjection
    takes_clip_features = True

    def recognises(self, image_proj: Mapping[str, torch.Tensor]) -> bool:
        return "perceiver_resampler.proj_in.weight" in image_proj

    def read_config(self, image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
        return _faceid_plus_config(image_proj, source)

    def image_proj_layout(self, config: Mapping) -> dict[str, tuple[int, ...]]:
        width = config["cross_attention_dim"]
        resampler = _linear("proj_in", width, config["clip_embed_dim"])
        resampler.update(_perceiver_layout(width, width, config))
        return {
            **super().image_proj_layout(config),
            **{f"perceiver_resampler.{k}": v for k, v in resampler.items()},
        }

    def published_config(self, token_dim: int, id_embed_dim: int = ARCFACE_DIM) -> dict:
        return {
            **super().published_config(token_dim, id_embed_dim),
            "clip_embed_dim": CLIP_VIT_H_DIM,
            "depth": 4,
            "heads": max(1, token_dim // PERCEIVER_DIM_HEAD),
            "dim_head": PERCEIVER_DIM_HEAD,
            "ff_mult": 4,
            "shortcut": True,
        }


class InstantID(Architecture):
    """InstantID's ``ip-adapter.bin``: a perceiver ``Resampler`` (``latents``), no LoRA, one
    family for SDXL; trained on insightface's raw (not unit-norm) ``face.embedding``."""

    name = "instantid"
    projection = IdentityResampler
    trained_on_raw_embeddings = True

    def recognises(self, image_proj: Mapping[str, torch.Tensor]) -> bool:
        return "latents" in image_proj

    def read_config(self, image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
        return _resampler_config(image_proj, source)

    def image_proj_layout(self, config: Mapping) -> dict[str, tuple[int, ...]]:
        layout = {"latents": (1, config["num_tokens"], config["dim"])}
        layout.update(_linear("proj_in", config["dim"], config["id_embed_dim"]))
        layout.update(_perceiver_layout(config["dim"], config["cross_attention_dim"], config))
        return layout

    def published_config(self, token_dim: int, id_embed_dim: int = ARCFACE_DIM) -> dict:
        dim = 1280 if token_dim in PUBLISHED_BASES else PERCEIVER_DIM_HEAD
        return {
            "id_embed_dim": ARCFACE_DIM,
            "cross_attention_dim": token_dim,
            "num_tokens": 16,
            "dim": dim,
            "depth": 4,
            "heads": dim // PERCEIVER_DIM_HEAD,
            "dim_head": PERCEIVER_DIM_HEAD,
            "ff_mult": 4,
        }

    def family(self, *, sdxl: bool) -> str:
        return self.name

    def projection_inputs(self, embeds: torch.Tensor) -> torch.Tensor:
        # components of a raw ArcFace embedding are roughly standard-normal: norm sqrt(512)
        return embeds * math.sqrt(embeds.shape[-1])


#: The architectures, most specific key pattern first (PlusV2 files hold FaceID's keys too).
ARCHITECTURES: tuple[Architecture, ...] = (FaceIDPlusV2(), InstantID(), FaceID())
FACEID, FACEID_PLUSV2, INSTANTID = FaceID.name, FaceIDPlusV2.name, InstantID.name


def architecture(name: str) -> Architecture:
    """The architecture called ``name`` (an :attr:`AdapterSpec.architecture` string)."""
    for candidate in ARCHITECTURES:
        if candidate.name == name:
            return candidate
    known = ", ".join(a.name for a in ARCHITECTURES)
    raise ValueError(f"unknown identity adapter architecture {name!r}; known: {known}")


def family_architecture(family: str) -> Architecture:
    """The architecture of a loaded adapter's family (``faceid-sd15``, ``instantid`` ...)."""
    for candidate in ARCHITECTURES:
        if family in (candidate.family(sdxl=False), candidate.family(sdxl=True)):
            return candidate
    raise ValueError(f"unknown identity adapter family {family!r}")


def split_checkpoint(
    state_dict: Mapping, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return ``(image_proj, ip_adapter)`` from a nested or ``image_proj.``-prefixed state dict."""
    if "image_proj" in state_dict or "ip_adapter" in state_dict:
        extra = sorted(set(state_dict) - {"image_proj", "ip_adapter"})
        if extra:
            raise IdentityAdapterError(
                f"{source}: unexpected top-level entries {extra[:5]} beside image_proj/ip_adapter"
            )
        image_proj = dict(state_dict.get("image_proj") or {})
        ip_adapter = dict(state_dict.get("ip_adapter") or {})
    else:
        image_proj, ip_adapter, other = {}, {}, []
        for key, value in state_dict.items():
            if key.startswith("image_proj."):
                image_proj[key[len("image_proj.") :]] = value
            elif key.startswith("ip_adapter."):
                ip_adapter[key[len("ip_adapter.") :]] = value
            else:
                other.append(key)
        if other:
            hint = (
                " It looks like a LoRA file (such as the separate *_lora.safetensors of "
                "IP-Adapter-FaceID): load that with pipe.load_lora_weights(...), not as an "
                "identity adapter."
                if any("lora" in key for key in other)
                else ""
            )
            raise IdentityAdapterError(
                f"{source}: not an identity adapter checkpoint: keys such as {sorted(other)[:3]} "
                f"are outside image_proj./ip_adapter.{hint}"
            )
    for half, weights in (("image_proj", image_proj), ("ip_adapter", ip_adapter)):
        if not weights:
            raise IdentityAdapterError(f"{source}: the {half} weights are missing or empty")
        bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise IdentityAdapterError(f"{source}: {half} entries {bad[:3]} are not tensors")
    return image_proj, ip_adapter


def inspect_checkpoint(
    image_proj: Mapping[str, torch.Tensor],
    ip_adapter: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
) -> AdapterSpec:
    """Recognise the architecture and read its dimensions from key names and shapes."""
    found = next((a for a in ARCHITECTURES if a.recognises(image_proj)), None)
    if found is not None:
        config = found.read_config(image_proj, source)
    elif "proj.weight" in image_proj or "proj.3.weight" in image_proj:
        raise IdentityAdapterError(
            f"{source}: this is an image IP-Adapter (CLIP image features), not a face identity "
            "adapter; load it with pipe.load_ip_adapter(...)"
        )
    else:
        raise IdentityAdapterError(
            f"{source}: unrecognised image_proj weights (keys {sorted(image_proj)[:5]}); expected "
            "IP-Adapter-FaceID (proj.0/proj.2/norm), FaceID-PlusV2 (plus perceiver_resampler.*) "
            "or InstantID (latents, proj_in, layers.N...)"
        )

    ip_layers, lora_layers, lora_rank, unknown = set(), set(), None, []
    for key, value in ip_adapter.items():
        if match := _IP_KEY.match(key):
            ip_layers.add(int(match[1]))
        elif match := _LORA_KEY.match(key):
            lora_layers.add(int(match[1]))
            if match[3] == "down":
                lora_rank = int(value.shape[0])
        else:
            unknown.append(key)
    if unknown:
        raise IdentityAdapterError(
            f"{source}: unrecognised ip_adapter keys {sorted(unknown)[:3]}; expected "
            "'<layer>.to_k_ip.weight', '<layer>.to_v_ip.weight' and FaceID LoRA "
            "'<layer>.to_q_lora.down.weight'-style keys"
        )
    if not ip_layers:
        raise IdentityAdapterError(f"{source}: ip_adapter holds no to_k_ip/to_v_ip weights")
    return AdapterSpec(
        architecture=found.name,
        token_dim=config["cross_attention_dim"],
        num_tokens=config["num_tokens"],
        ip_layers=tuple(sorted(ip_layers)),
        lora_layers=tuple(sorted(lora_layers)),
        lora_rank=lora_rank,
        projection_config=config,
    )


def match_unet(
    spec: AdapterSpec,
    image_proj: Mapping[str, torch.Tensor],
    ip_adapter: Mapping[str, torch.Tensor],
    layers: list[AttentionLayer],
    *,
    sdxl: bool,
    source: str = "checkpoint",
) -> AdapterSpec:
    """Check every weight against this UNet's layers; return ``spec`` with its family set.

    Raises :class:`IdentityAdapterError` that names the expected and the found shapes.
    """
    unet_text = _unet_summary(layers, sdxl=sdxl)
    cross = [layer for layer in layers if layer.is_cross_attention]
    context_dims = sorted({layer.context_dim for layer in cross})
    problems = []
    if context_dims != [spec.token_dim]:
        problems.append(
            f"its identity tokens are {spec.token_dim}-d, this UNet's cross-attention takes "
            f"{'/'.join(map(str, context_dims))}-d context"
        )
    cross_indices = tuple(layer.index for layer in cross)
    if spec.ip_layers != cross_indices:
        problems.append(
            f"it has to_k_ip/to_v_ip for layers {_index_list(spec.ip_layers)}, this UNet's "
            f"cross-attention layers are {_index_list(cross_indices)}"
        )
    expected = ip_adapter_layout(layers, lora_rank=spec.lora_rank)
    expected.update({f"image_proj.{k}": v for k, v in image_proj_layout(spec).items()})
    found = {k: tuple(v.shape) for k, v in ip_adapter.items()}
    found.update({f"image_proj.{k}": tuple(v.shape) for k, v in image_proj.items()})
    problems.extend(_shape_problems(expected, found))
    if problems:
        base = PUBLISHED_BASES.get(spec.token_dim)
        mismatch = base is not None and base != ("SDXL" if sdxl else "SD1.5")
        hint = f" It is an {base} adapter: load it into an {base} pipeline." if mismatch else ""
        raise IdentityAdapterError(
            f"{source}: {spec.summary()} does not fit this {unet_text}: "
            + "; ".join(problems)
            + "."
            + hint
        )
    return replace(spec, family=architecture(spec.architecture).family(sdxl=sdxl))


def _unet_summary(layers: list[AttentionLayer], *, sdxl: bool) -> str:
    cross = [layer for layer in layers if layer.is_cross_attention]
    dims = "/".join(str(d) for d in sorted({layer.context_dim for layer in cross}))
    kind = "SDXL" if sdxl else "SD1.5"
    return f"{kind}-layout UNet ({len(cross)} cross-attention layers, {dims}-d context)"


def ip_adapter_layout(
    layers: list[AttentionLayer], *, lora_rank: int | None
) -> dict[str, tuple[int, ...]]:
    """Published ``ip_adapter`` key -> shape for these layers (LoRA keys when ``lora_rank``)."""
    layout = {}
    for layer in layers:
        i, hidden = layer.index, layer.hidden_size
        if lora_rank:
            inputs = {"to_q": hidden, "to_k": layer.context_dim, "to_v": layer.context_dim}
            for proj in LORA_PROJECTIONS:
                layout[f"{i}.{proj}_lora.down.weight"] = (lora_rank, inputs.get(proj, hidden))
                layout[f"{i}.{proj}_lora.up.weight"] = (hidden, lora_rank)
        if layer.is_cross_attention:
            layout[f"{i}.to_k_ip.weight"] = (hidden, layer.context_dim)
            layout[f"{i}.to_v_ip.weight"] = (hidden, layer.context_dim)
    return layout


def image_proj_layout(spec: AdapterSpec) -> dict[str, tuple[int, ...]]:
    """Published ``image_proj`` key -> shape for a spec's projection config."""
    return architecture(spec.architecture).image_proj_layout(spec.projection_config)


def _perceiver_layout(dim: int, output_dim: int, cfg: Mapping) -> dict[str, tuple[int, ...]]:
    inner, ff = cfg["heads"] * cfg["dim_head"], dim * cfg["ff_mult"]
    layout = {**_linear("proj_out", output_dim, dim), **_norm("norm_out", output_dim)}
    for n in range(cfg["depth"]):
        layout.update(_norm(f"layers.{n}.0.norm1", dim))
        layout.update(_norm(f"layers.{n}.0.norm2", dim))
        layout[f"layers.{n}.0.to_q.weight"] = (inner, dim)
        layout[f"layers.{n}.0.to_kv.weight"] = (2 * inner, dim)
        layout[f"layers.{n}.0.to_out.weight"] = (dim, inner)
        layout.update(_norm(f"layers.{n}.1.0", dim))
        layout[f"layers.{n}.1.1.weight"] = (ff, dim)
        layout[f"layers.{n}.1.3.weight"] = (dim, ff)
    return layout


def _linear(prefix: str, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_features, in_features), f"{prefix}.bias": (out_features,)}


def _norm(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _faceid_config(image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
    hidden, id_dim = _shape(image_proj, "proj.0.weight", source, ndim=2)
    (width,) = _shape(image_proj, "norm.weight", source, ndim=1)
    out, _ = _shape(image_proj, "proj.2.weight", source, ndim=2)
    if out % width:
        raise IdentityAdapterError(
            f"{source}: image_proj 'proj.2.weight' has {out} outputs, not a multiple of the "
            f"{width}-d token width given by 'norm.weight'"
        )
    return {
        "id_embed_dim": id_dim,
        "hidden_dim": hidden,
        "cross_attention_dim": width,
        "num_tokens": out // width,
    }


def _faceid_plus_config(image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
    config = _faceid_config(image_proj, source)
    resampler = {
        k[len("perceiver_resampler.") :]: v
        for k, v in image_proj.items()
        if k.startswith("perceiver_resampler.")
    }
    _, clip_dim = _shape(resampler, "proj_in.weight", source, ndim=2)
    return {
        **config,
        "clip_embed_dim": clip_dim,
        **_perceiver_config(resampler, config["cross_attention_dim"], source),
        "shortcut": True,
    }


def _resampler_config(image_proj: Mapping[str, torch.Tensor], source: str) -> dict:
    _, num_queries, dim = _shape(image_proj, "latents", source, ndim=3)
    _, id_dim = _shape(image_proj, "proj_in.weight", source, ndim=2)
    output_dim, _ = _shape(image_proj, "proj_out.weight", source, ndim=2)
    if id_dim != ARCFACE_DIM:
        raise IdentityAdapterError(
            f"{source}: this Resampler takes {id_dim}-d inputs, not 512-d face embeddings: it "
            "looks like an IP-Adapter Plus (CLIP image features) checkpoint; load it with "
            "pipe.load_ip_adapter(...)"
        )
    return {
        "id_embed_dim": id_dim,
        "cross_attention_dim": output_dim,
        "num_tokens": num_queries,
        "dim": dim,
        **_perceiver_config(image_proj, dim, source),
    }


def _perceiver_config(weights: Mapping[str, torch.Tensor], dim: int, source: str) -> dict:
    depth = len({int(m[1]) for k in weights if (m := _LAYER_KEY.match(k))})
    if depth == 0:
        raise IdentityAdapterError(f"{source}: the perceiver has no layers.N.* weights")
    inner, _ = _shape(weights, "layers.0.0.to_q.weight", source, ndim=2)
    ff, _ = _shape(weights, "layers.0.1.1.weight", source, ndim=2)
    if inner % PERCEIVER_DIM_HEAD or ff % dim:
        raise IdentityAdapterError(
            f"{source}: perceiver attention width {inner} is not a multiple of "
            f"{PERCEIVER_DIM_HEAD}-wide heads, or feed-forward width {ff} not a multiple of {dim}"
        )
    return {
        "depth": depth,
        "heads": inner // PERCEIVER_DIM_HEAD,
        "dim_head": PERCEIVER_DIM_HEAD,
        "ff_mult": ff // dim,
    }


def _shape(
    weights: Mapping[str, torch.Tensor], key: str, source: str, *, ndim: int
) -> tuple[int, ...]:
    if key not in weights:
        raise IdentityAdapterError(f"{source}: image_proj weight {key!r} is missing")
    shape = tuple(weights[key].shape)
    if len(shape) != ndim:
        raise IdentityAdapterError(f"{source}: {key!r} has shape {shape}, expected {ndim}-d")
    return shape


def _shape_problems(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], limit: int = 3
) -> list[str]:
    differing = [k for k in expected if k in found and found[k] != expected[k]]
    differing.sort(key=lambda k: "_ip." not in k)  # the identity weights first, then the rest
    wrong = [f"{k!r} expected shape {expected[k]}, found {found[k]}" for k in differing]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    problems = wrong[:limit]
    if len(wrong) > limit:
        problems.append(f"{len(wrong) - limit} more shapes differ")
    if missing:
        problems.append(f"{len(missing)} weights missing (e.g. {missing[:2]})")
    if unexpected:
        problems.append(f"{len(unexpected)} weights unexpected (e.g. {unexpected[:2]})")
    return problems


def _index_list(indices: tuple[int, ...]) -> str:
    if len(indices) <= 6:
        return f"[{', '.join(map(str, indices))}]"
    return f"[{indices[0]}, {indices[1]}, ..., {indices[-1]}] ({len(indices)})"
