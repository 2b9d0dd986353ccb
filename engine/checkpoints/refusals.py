"""The owner-facing refusal for every checkpoint file Hypercord will not load: what the file is and what to do.

Why one module: the bot lists and checks ``models/checkpoints/`` without torch and the worker refuses at load time;
both must say the same words, and tests pin them exactly.  Each message names the file (its name only, made safe with
:func:`engine.intake.base.quote_text`), says what it is in a complete sentence and what to install instead.
Torch-free.
"""

from __future__ import annotations

from engine.checkpoints.families import Detection, Kind
from engine.errors import EngineError
from engine.intake.base import quote_text
from engine.intake.kinds import FileIdentity, FileKind

__all__ = ["FAMILY_LABELS", "CheckpointRefused", "damaged_refusal", "detection_refusal", "folder_refusal",
           "mismatch_refusal", "no_vae_refusal", "not_safetensors_refusal", "pickle_refusal", "vae_refusal",
           "with_article"]

FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_ONLY = "Hypercord runs SD 1.x and SD 2.x checkpoints only. Install an SD 1.x or SD 2.x checkpoint instead."
_UNSUPPORTED = {Kind.SDXL_BASE: "an SDXL base checkpoint", Kind.SDXL_REFINER: "an SDXL refiner checkpoint",
                Kind.SD3: "a Stable Diffusion 3 checkpoint", Kind.FLUX: "a Flux checkpoint"}


class CheckpointRefused(EngineError, ValueError):
    """A checkpoint (or VAE) file that will not be loaded; ``str(err)`` is the owner-facing refusal."""


def _name(name: str) -> str:
    return f"`{quote_text(name)}`"


def with_article(what: str) -> str:
    """``what`` with "a" or "an" as it is read aloud: "an SD 1.x checkpoint", "a LoRA", "an unknown file"."""
    spoken_vowel = what.startswith(("SD", "unknown", "inpainting", "embedding")) or what[:1].lower() in "aeio"
    return f"{'an' if spoken_vowel else 'a'} {what}"


def _a(family: str | None) -> str:
    """ "an SD 1.x" / "an SDXL" / "a" """
    label = FAMILY_LABELS.get(family or "")
    return with_article(label) if label else "a"


def _for(family: str | None) -> str:
    label = FAMILY_LABELS.get(family or "")
    return f" for {label}" if label else ""


def pickle_refusal(name: str) -> str:
    """A ``.ckpt`` / ``.pt`` / ``.bin`` pickle given as a checkpoint."""
    return (f"{_name(name)} is a pickled PyTorch checkpoint, and Hypercord never unpickles checkpoints (a pickle can "
            "run code when it is opened). Convert it to .safetensors once on a machine you trust (for example in "
            "A1111's Checkpoint Merger: this file as the primary model, interpolation \"No interpolation\", checkpoint "
            "format \"safetensors\") and install the .safetensors file instead.")


def damaged_refusal(name: str, problem: str) -> str:
    """A safetensors file whose header is broken; ``problem`` is a clause from the header reader."""
    return f"{_name(name)} cannot be read: {problem}. Download it again."


def not_safetensors_refusal(name: str, identity: FileIdentity) -> str:
    """A file that is not a safetensors file; ``identity`` says what it is instead."""
    kind = identity.kind
    if kind in (FileKind.TORCH_PICKLE, FileKind.HYPERNETWORK):
        return pickle_refusal(name)
    if kind is FileKind.EMPTY:
        return f"{_name(name)} is empty (0 bytes). Download it again."
    if kind is FileKind.WEB_PAGE:
        return f"{_name(name)} is a web page (HTML), not a checkpoint. Download the checkpoint again with its direct link."
    if kind is FileKind.LFS_POINTER:
        return (f"{_name(name)} is a Git LFS pointer, not the checkpoint itself. Download the real file (on Hugging "
                "Face, the link with /resolve/ in it).")
    if kind is FileKind.ARCHIVE:
        return f"{_name(name)} is a zip archive, not a checkpoint. Unpack it and install the .safetensors file inside."
    return (f"{_name(name)} is not a safetensors file (it does not start with a safetensors header). Download it "
            "again, or convert it to .safetensors.")


def detection_refusal(name: str, found: Detection) -> str | None:
    """The refusal for what :func:`~engine.checkpoints.families.detect` found; None for a loadable checkpoint."""
    kind, family = found.kind, found.family
    if kind is Kind.CHECKPOINT:
        return None
    if kind in _UNSUPPORTED:
        return f"{_name(name)} is {_UNSUPPORTED[kind]}; {_ONLY}"
    if kind is Kind.INPAINTING:
        return (f"{_name(name)} is {_a(family)} inpainting checkpoint (its UNet takes 9 input channels); Hypercord "
                "renders from text only and cannot use inpainting models. Install the model's regular "
                "(non-inpainting) version instead.")
    if kind is Kind.OTHER_INPUTS:
        return (f"{_name(name)} is {_a(family)} model whose UNet takes {found.in_channels} input channels (a depth, "
                "instruct-pix2pix or upscaler model); Hypercord renders from text only, with 4-channel UNets. Install "
                "a regular SD 1.x or SD 2.x checkpoint instead.")
    if kind is Kind.UNET_ONLY:
        return (f"{_name(name)} holds only {_a(family)} UNet, without the text encoder a checkpoint needs. Install the "
                "complete checkpoint (UNet, text encoder and VAE in one file) instead.")
    if kind is Kind.VAE:
        return (f"{_name(name)} is a VAE on its own, not a checkpoint. Put it in models/vae/ and choose it as a "
                "checkpoint's VAE instead.")
    if kind is Kind.LORA:
        return (f"{_name(name)} is a {found.label or 'LoRA'}{_for(family)}, not a checkpoint. Install it as a LoRA "
                "instead; prompts apply it with <lora:NAME:weight>.")
    if kind is Kind.EMBEDDING:
        return (f"{_name(name)} is a textual-inversion embedding{_for(family)}, not a checkpoint. Install it as an "
                "embedding instead; prompts use it by its name.")
    count = found.tensor_count
    tensors = "its 1 tensor matches" if count == 1 else f"its {count} tensors match"
    return (f"{_name(name)} is not a checkpoint Hypercord knows: {tensors} "
            "neither the SD 1.x nor the SD 2.x layout of A1111's single-file checkpoints. Install an SD 1.x or SD 2.x "
            "checkpoint instead.")


def mismatch_refusal(name: str, family: str | None, problem: str) -> str:
    """A checkpoint of a known family whose parts do not fit together; ``problem`` is a clause."""
    return (f"{_name(name)} looks like {_a(family)} checkpoint, but {problem}; the file may be damaged or a variant "
            "Hypercord does not know. Download it again or install another checkpoint.")


def no_vae_refusal(name: str) -> str:
    """A checkpoint without a VAE, loaded without a separate VAE file."""
    return (f"{_name(name)} holds no VAE. Give it a VAE file in its settings (for example "
            "vae-ft-mse-840000-ema-pruned.safetensors from models/vae/).")


def folder_refusal(name: str) -> str:
    """A folder that is not a diffusers Stable Diffusion pipeline."""
    return (f"{_name(name)} is a folder but not a diffusers Stable Diffusion pipeline (it needs a model_index.json "
            "and unet, vae, text_encoder, tokenizer and scheduler folders). Install a single .safetensors file or a "
            "complete diffusers folder instead.")


def vae_refusal(name: str, what: str) -> str:
    """A file given as a VAE that is not one; ``what`` says what it is ("an SD 1.x checkpoint", "a pickle")."""
    return (f"{_name(name)} is {what}, not a VAE Hypercord can load. Choose a VAE saved as .safetensors instead (for "
            "example vae-ft-mse-840000-ema-pruned.safetensors).")
