"""Which model family a file is, from its tensor names and shapes alone.

Why from names and shapes: the header of a safetensors file lists every tensor with its shape, so a multi-GB
checkpoint is told apart in milliseconds without reading a weight, and the bot can list and check the files in
``models/checkpoints/`` without torch.  The rules (all facts of the public layouts):

* SD 1.x: A1111's layout with a Hugging Face CLIP text tower (``cond_stage_model.transformer.…``); SD 2.x: with an
  OpenCLIP one (``cond_stage_model.model.…``, 1024 wide on real files). The UNet's cross-attention width must
  equal the text tower's (768 / 1024 on real files; other widths are accepted for small test models).
* Refused, each named: SDXL base (``conditioner.embedders.1.…``, or a ``label_emb`` with 2048-wide context) and
  refiner (``conditioner.embedders.0.model.…`` only, 1280-wide); SD 3 / 3.5 (``joint_blocks``); Flux
  (``double_blocks`` + ``single_blocks``); inpainting models (a UNet with 9 input channels); other conditioned
  UNets (depth: 5, instruct-pix2pix: 8, upscalers: 7 input channels); UNets without a text encoder; VAEs on their
  own; LoRA / LyCORIS files and textual-inversion embeddings (named by
  :func:`engine.intake.identify.classify_keys`, the same rules the model intake uses); anything else.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from engine.checkpoints.architecture import clip_l_prefix, vae_prefix
from engine.checkpoints.layout import CLIP_L, OPEN_CLIP, UNET, VAE, Shapes, with_prefix
from engine.intake.identify import classify_keys
from engine.intake.kinds import FileKind

__all__ = ["Detection", "Kind", "detect"]

_LDM_PREFIXES = (UNET, VAE, "cond_stage_model.", "conditioner.")
_SDXL_CONTEXT = {2048: "sdxl_base", 1280: "sdxl_refiner"}
_CONTEXT_FAMILY = {768: "sd1", 1024: "sd2"}


class Kind(StrEnum):
    """What a file is, as the checkpoint loader sees it; only :attr:`CHECKPOINT` can be loaded."""

    CHECKPOINT = "checkpoint"  # an SD 1.x or SD 2.x text-to-image checkpoint
    SDXL_BASE = "sdxl_base"
    SDXL_REFINER = "sdxl_refiner"
    SD3 = "sd3"
    FLUX = "flux"
    INPAINTING = "inpainting"  # 9 input channels
    OTHER_INPUTS = "other_inputs"  # a UNet conditioned on more than the latent (depth, pix2pix, upscaler)
    UNET_ONLY = "unet_only"  # a UNet without a text encoder
    VAE = "vae"
    LORA = "lora"
    EMBEDDING = "embedding"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Detection:
    """The answer of :func:`detect`.

    ``family``: ``sd1`` / ``sd2`` where known (also for inpainting models, LoRAs, embeddings; ``sdxl`` for those);
    ``label``: a LoRA's kind in words ("LoRA", "LyCORIS (LoHa)"); ``in_channels`` / ``context_dim``: the UNet's;
    ``text_dim``: the text tower's width; ``has_vae``: the file holds a VAE; ``tensor_count``: tensors in the file.
    """

    kind: Kind
    family: str | None = None
    label: str = ""
    in_channels: int | None = None
    context_dim: int | None = None
    text_dim: int | None = None
    has_vae: bool = False
    tensor_count: int = 0


def _context_dim(shapes: Shapes) -> int | None:
    for name in sorted(shapes):
        if name.startswith(UNET) and name.endswith("attn2.to_k.weight") and len(shapes[name]) == 2:
            return shapes[name][1]
    return None


def _text(shapes: Shapes) -> tuple[str | None, int | None]:
    """The text tower's family and width."""
    if with_prefix(shapes, CLIP_L):
        token = shapes.get(f"{clip_l_prefix(shapes)}embeddings.token_embedding.weight")
        return "sd1", token[-1] if token else None
    if with_prefix(shapes, OPEN_CLIP):
        token = shapes.get(f"{OPEN_CLIP}token_embedding.weight")
        return "sd2", token[-1] if token else None
    return None, None


def _ldm(shapes: Shapes) -> Detection:
    count = len(shapes)
    context = _context_dim(shapes)
    if with_prefix(shapes, f"{UNET}joint_blocks.") or with_prefix(shapes, "text_encoders."):
        return Detection(Kind.SD3, tensor_count=count)
    if with_prefix(shapes, f"{UNET}double_blocks."):
        return Detection(Kind.FLUX, tensor_count=count)
    if with_prefix(shapes, "conditioner.embedders.") or with_prefix(shapes, f"{UNET}label_emb."):
        openclip_only = with_prefix(shapes, "conditioner.embedders.0.model.") and \
            not with_prefix(shapes, "conditioner.embedders.1.")
        refiner = openclip_only or context == 1280
        return Detection(Kind.SDXL_REFINER if refiner else Kind.SDXL_BASE, "sdxl", context_dim=context,
                         tensor_count=count)
    has_vae = vae_prefix(shapes) == VAE
    conv_in = shapes.get(f"{UNET}input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        return Detection(Kind.VAE if has_vae else Kind.UNKNOWN, has_vae=has_vae, tensor_count=count)
    family, width = _text(shapes)
    found = Detection(Kind.CHECKPOINT, family or _CONTEXT_FAMILY.get(context or 0), in_channels=conv_in[1],
                      context_dim=context, text_dim=width, has_vae=has_vae, tensor_count=count)
    if conv_in[1] == 9:
        return replace(found, kind=Kind.INPAINTING)
    if conv_in[1] != 4 or with_prefix(shapes, "depth_model."):
        return replace(found, kind=Kind.OTHER_INPUTS)
    if width is None:
        return replace(found, kind=Kind.UNET_ONLY if found.family else Kind.UNKNOWN)
    return found


def detect(shapes: Shapes) -> Detection:
    """What the tensors ``shapes`` (name -> shape, e.g. from a safetensors header) make up."""
    count = len(shapes)
    if any(name.startswith(_LDM_PREFIXES) for name in shapes):
        return _ldm(shapes)
    if with_prefix(shapes, "double_blocks.") and with_prefix(shapes, "single_blocks."):
        return Detection(Kind.FLUX, tensor_count=count)
    if with_prefix(shapes, "joint_blocks."):
        return Detection(Kind.SD3, tensor_count=count)
    if vae_prefix(shapes) == "":
        return Detection(Kind.VAE, has_vae=True, tensor_count=count)
    found = classify_keys(list(shapes), shapes)
    if found is not None and found[0] in (FileKind.LORA, FileKind.EMBEDDING):
        kind = Kind.LORA if found[0] is FileKind.LORA else Kind.EMBEDDING
        return Detection(kind, found[2], label=found[1], tensor_count=count)
    return Detection(Kind.UNKNOWN, tensor_count=count)
