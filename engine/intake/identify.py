"""What a file is, from a bounded look at it, and the one-line refusal for every kind that is not a hypernetwork.

Why one module: "is this a LoRA, a checkpoint, a web page?" is asked by the upload and folder intake, by the
downloader (a link that returned an HTML page) and by the sandbox child (a pickle's keys are only known after the
safe load), and the admin should read the same words whichever asked.  The answer is a typed
:class:`~engine.intake.kinds.FileIdentity`; every refusal is worded for the kind the admin meant to add
(``expected``: a hypernetwork, a LoRA or an embedding), and a file of another installable kind is named as such, so
the bot can point to the command that takes it.  What is looked at, all bounded: the first 4 KiB (magic numbers,
text), a safetensors header (:mod:`engine.intake.safetensors_header`), a zip's member names (its directory size is
checked first, :func:`engine.intake.containers.open_zip`).  Key names follow kohya / LyCORIS / diffusers for LoRA
(format and model family from :mod:`engine.lora.detect`, the engine's own classifier, pure Python), A1111 for
embeddings (``string_to_param``, ``emb_params``, SDXL's ``clip_l``/``clip_g``, or one vector tensor as diffusers
saves it) and the original Stable Diffusion layout for checkpoints (``model.diffusion_model.``).  Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import IO

from engine.intake.base import IntakeRefused, clean_text, damaged, human_size, quote_text
from engine.intake.containers import open_zip
from engine.intake.kinds import INSTALLABLE, Container, FileIdentity, FileKind, kind_article, kind_noun
from engine.intake.safetensors_header import MAX_HEADER_BYTES, HeaderError, header_length, key_sample, read_header
from engine.lora.detect import describe_shapes

__all__ = ["CANONICAL_FORMAT", "RUNNABLE_FAMILIES", "classify_keys", "identify", "identify_head", "identify_loaded",
           "link_refusal", "lora_format_label", "refusal", "runnable", "what_it_is"]

CANONICAL_FORMAT = "hypercord-hypernetwork"  # engine.hypernet.canonical.FORMAT (that module needs torch)
HEAD_BYTES = 4096
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")
_LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_")
_LORA_PARTS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".hada_w1_a", ".lokr_w1",
               ".oft_blocks", ".oft_diag")
#: Model families this engine runs (engine/worker/checkpoints.py refuses SDXL checkpoints).
RUNNABLE_FAMILIES = ("sd1", "sd2")
# engine.lora.detect's module types -> the LyCORIS names trainers and model pages use.
_LYCORIS_TYPES = (("tucker", "LoCon"), ("loha", "LoHa"), ("lokr", "LoKr"), ("ia3", "(IA)³"), ("full", "full"),
                  ("norm", "norm"), ("glora", "GLoRA"), ("oft", "OFT"))
_MODEL_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")
_IMAGES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))
_MESSAGES = tuple(re.compile(p) for p in (*(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.){{1,300}})"'
                                              for key in ("message", "detail", "error", "msg")),
                                            r"<Message>([^<]{1,300})</", r"<Code>([^<]{1,300})</"))


def _excerpt(text: str) -> str:
    """The reply's own message (JSON ``message``/``detail``/``error``, XML ``<Message>``), else its start."""
    found = next((m for m in (p.search(text) for p in _MESSAGES) if m), None)
    return clean_text(" ".join((found[1] if found else text).replace("\\n", " ").split()), 120)


def identify_head(head: bytes, size: int) -> FileIdentity | None:
    """Images and text replies (web page, JSON or XML error, Git LFS pointer, other text) from the first bytes."""
    for magic, what in _IMAGES:
        if head.startswith(magic):
            return FileIdentity(FileKind.IMAGE, size, label=what)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return FileIdentity(FileKind.IMAGE, size, label="WebP")
    sample = head[:HEAD_BYTES]
    if not sample or b"\0" in sample:
        return None
    text = sample.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    printable = sum(c.isprintable() or c in "\t\r\n\x1b" for c in text)
    if text.count("\ufffd") > 1 or printable < 0.97 * len(text):
        return None
    lower = text[:1024].lower()
    if text.startswith("version https://git-lfs.github.com/spec/"):
        return FileIdentity(FileKind.LFS_POINTER, size)
    if lower.startswith("<") and any(tag in lower for tag in ("<html", "<!doctype html", "<head", "<body")):
        return FileIdentity(FileKind.WEB_PAGE, size)
    if text.startswith(("{", "[")) or lower.startswith("<?xml") or lower.startswith("<error"):
        return FileIdentity(FileKind.ERROR_BODY, size, excerpt=_excerpt(text))
    return FileIdentity(FileKind.TEXT, size, excerpt=_excerpt(text))


def lora_format_label(types: Collection[str]) -> str:
    """``LoRA``, ``LoCon``, ``LyCORIS (LoHa)``, ``LoRA with DoRA``: the format as model pages name it, from
    :attr:`engine.lora.detect.LoraFileInfo.types`."""
    lycoris = [name for kind, name in _LYCORIS_TYPES if kind in types]
    label = f"LyCORIS ({', '.join(lycoris)})" if lycoris else "LoCon" if "locon" in types else "LoRA"
    return label + (" with DoRA" if "dora" in types else "")


def _checkpoint_family(keys: Collection[str]) -> str | None:
    for prefix, family in (("conditioner.embedders.1.", "sdxl"), ("cond_stage_model.model.", "sd2"),
                           ("cond_stage_model.transformer.", "sd1")):
        if any(k.startswith(prefix) for k in keys):
            return family
    return None


def _embedding_family(names: Collection[str], shapes: Mapping[str, Sequence[int]]) -> str | None:
    if "clip_g" in names:
        return "sdxl"
    widths = [int(s[-1]) for s in shapes.values() if len(s) >= 1]
    return _WIDTH_FAMILY.get(widths[0] if widths else 0)


def _one_vector_tensor(names: Collection[str], shapes: Mapping[str, Sequence[int]]) -> bool:
    """One tensor of one or more text-encoder-wide vectors, keyed by its token: how diffusers saves an embedding
    (``learned_embeds``).  The width must be a known text encoder's, or any one small tensor would pass."""
    return (len(names) == 1 and len(shapes) == 1
            and all(1 <= len(shape) <= 2 and int(shape[-1]) in _WIDTH_FAMILY for shape in shapes.values()))


def classify_keys(keys: Collection[str], shapes: Mapping[str, Sequence[int]] | None = None,
                  metadata: Mapping[str, str] | None = None) -> tuple[FileKind, str, str | None] | None:
    """``(kind, label, family)`` of a state dict from its tensor names (and shapes and safetensors metadata, for the
    format and the family), or None."""
    shapes = shapes or {}
    if any(k.startswith(_CHECKPOINT_PREFIXES) for k in keys):
        return FileKind.CHECKPOINT, "Stable Diffusion checkpoint", _checkpoint_family(keys)
    if any(k.startswith(_LORA_PREFIXES) or any(part in k for part in _LORA_PARTS) for k in keys):
        info = describe_shapes(shapes or dict.fromkeys(keys, ()), metadata)
        return FileKind.LORA, lora_format_label(info.types), info.family
    names = set(keys)
    if names and (names <= {"emb_params"} or {"clip_l", "clip_g"} <= names
                  or any(k.startswith("string_to_param") for k in names) or _one_vector_tensor(names, shapes)):
        return FileKind.EMBEDDING, "textual-inversion embedding", _embedding_family(names, shapes)
    return None


def _shapes(state: Mapping[object, object]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a loaded state dict (anything with a ``shape``), one level of nesting included."""
    found: dict[str, tuple[int, ...]] = {}
    for key, value in list(state.items())[:50_000]:
        inner = value.items() if isinstance(value, Mapping) else [("", value)]
        for sub, tensor in list(inner)[:1000]:
            shape = getattr(tensor, "shape", None)
            if shape is not None:
                found[f"{key}.{sub}".rstrip(".")] = tuple(int(d) for d in shape)
    return found


def identify_loaded(obj: object, size: int, container: Container) -> FileIdentity:
    """What a safely loaded PyTorch object is (the sandbox child calls this with ``torch.load``'s result)."""
    if not isinstance(obj, Mapping):
        return FileIdentity(FileKind.UNKNOWN, size, container)
    if any(type(k) is int for k in obj):
        return FileIdentity(FileKind.HYPERNETWORK, size, container)
    nested = obj.get("state_dict")
    state = nested if isinstance(nested, Mapping) else obj
    keys = [str(k) for k in list(state)[:50_000]]
    found = classify_keys(keys + [str(k) for k in list(obj)[:1000]], _shapes(state))
    if found is None:
        return FileIdentity(FileKind.UNKNOWN, size, container)
    kind, label, family = found
    return FileIdentity(kind, size, container, label=label, family=family)


def _identify_safetensors(f: IO[bytes], size: int, header_len: int) -> FileIdentity:
    try:
        header = read_header(f, size)
    except HeaderError as error:
        if header_len > MAX_HEADER_BYTES and header_len <= size - 8:  # too big to parse: name what its keys say
            found = classify_keys(key_sample(f, header_len))
            if found is not None:
                return FileIdentity(found[0], size, "safetensors", label=found[1], family=found[2])
        return FileIdentity(FileKind.DAMAGED, size, "safetensors", problem=str(error),
                            declared_bytes=error.declared_bytes)
    count, declared = len(header.tensors), header.declared_bytes
    if header.metadata.get("format") == CANONICAL_FORMAT:
        return FileIdentity(FileKind.HYPERNETWORK, size, "safetensors", tensor_count=count, declared_bytes=declared)
    found = classify_keys(list(header.tensors), {name: t.shape for name, t in header.tensors.items()}, header.metadata)
    if found is None:
        return FileIdentity(FileKind.SAFETENSORS_OTHER, size, "safetensors", tensor_count=count, declared_bytes=declared)
    return FileIdentity(found[0], size, "safetensors", label=found[1], family=found[2], tensor_count=count,
                        declared_bytes=declared)


def _identify_zip(f: IO[bytes], size: int) -> FileIdentity:
    try:
        with open_zip(f, size) as zf:
            names = zf.namelist()
    except IntakeRefused as refused:
        return refused.identity or FileIdentity(FileKind.DAMAGED, size, "pt", problem="it is not a complete zip archive")
    prefix = names[0].split("/", 1)[0] if names else ""
    if f"{prefix}/data.pkl" in names:
        return FileIdentity(FileKind.TORCH_PICKLE, size, "pt")
    models = [n for n in names if n.lower().endswith(_MODEL_SUFFIXES)]
    shown = tuple(quote_text(n, 100) for n in (models or names)[:5])
    return FileIdentity(FileKind.ARCHIVE, size, members=shown)


def identify(f: IO[bytes], size: int) -> FileIdentity:
    """What the open file ``f`` (``size`` bytes) is, reading only bounded parts of it."""
    if size == 0:
        return FileIdentity(FileKind.EMPTY, 0)
    f.seek(0)
    head = f.read(HEAD_BYTES)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _identify_zip(f, size)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FileIdentity(FileKind.TORCH_PICKLE, size, "pt-legacy")
    header_len = header_length(head)
    if header_len is not None and header_len <= max(size - 8, 100 << 20):
        return _identify_safetensors(f, size, header_len)
    return identify_head(head, size) or FileIdentity(FileKind.UNKNOWN, size)


# -------------------------------------------------------------------------------------------------- the messages

_FILE_OF = {FileKind.HYPERNETWORK: "the hypernetwork's .pt file", FileKind.LORA: "the LoRA file",
            FileKind.EMBEDDING: "the embedding file"}


def _for_family(identity: FileIdentity) -> str:
    family = FAMILY_LABELS.get(identity.family or "")
    return f" for {family}" if family else ""


def _quoted(excerpt: str) -> str:
    return f" (“{excerpt}”)" if excerpt else ""


def what_it_is(identity: FileIdentity) -> str:
    """An installable file in words: ``a hypernetwork``, ``a LyCORIS (LoHa) for SD 1.x``, ``a textual-inversion
    embedding for SD 2.x``."""
    if identity.kind is FileKind.LORA:
        return f"a {identity.label or 'LoRA'}{_for_family(identity)}"
    if identity.kind is FileKind.EMBEDDING:
        return f"a textual-inversion embedding{_for_family(identity)}"
    return kind_article(identity.kind)


def runnable(identity: FileIdentity) -> bool:
    """Whether a model of this family can run here (unknown families are given the benefit of the doubt)."""
    return identity.family is None or identity.family in RUNNABLE_FAMILIES


def _other_safetensors(identity: FileIdentity, expected: FileKind) -> str:
    count = identity.tensor_count or 0
    holds = f"this .safetensors file holds {count} tensor{'' if count == 1 else 's'} but no {kind_noun(expected)}"
    if expected is FileKind.HYPERNETWORK:
        return f"{holds} (A1111 saves hypernetworks as .pt files); add the hypernetwork's .pt file instead"
    return f"{holds}; check that you picked the {kind_noun(expected)} file itself"


def refusal(identity: FileIdentity, expected: FileKind = FileKind.HYPERNETWORK) -> str | None:
    """The one-line refusal (what the file is, what to do) for a file given as ``expected`` (an installable kind);
    None when it may be one (the sandboxed parse decides the rest)."""
    kind = identity.kind
    if kind is FileKind.TORCH_PICKLE:
        return None
    wanted = kind_article(expected)
    if kind in INSTALLABLE and not runnable(identity):
        other = "" if kind is expected else f", not {wanted},"
        return (f"this is {what_it_is(identity)}{other} and this bot runs only SD 1.x and SD 2.x checkpoints, which "
                "cannot use it; look for its SD 1.x version")
    if kind is expected:
        return None
    if kind in INSTALLABLE:
        return f"this is {what_it_is(identity)}, not {wanted}; add it as {kind_article(kind)} instead"
    if kind is FileKind.CHECKPOINT:
        family = FAMILY_LABELS.get(identity.family or "")
        facts = human_size(identity.size) + (f", {family}" if family else "")
        return (f"this is a Stable Diffusion checkpoint ({facts}), not {wanted}; the bot's owner sets the "
                "checkpoint in the config (models.checkpoint), it cannot be added as a model")
    if kind is FileKind.SAFETENSORS_OTHER:
        return _other_safetensors(identity, expected)
    if kind is FileKind.ARCHIVE:
        first = f" holding `{identity.members[0]}`" if identity.members else ""
        return f"the file is a zip archive{first}, not a model file; unpack it and add the model file inside"
    if kind is FileKind.WEB_PAGE:
        return "the file is a web page (HTML), not a model file; download the model again with its direct download link"
    if kind is FileKind.ERROR_BODY:
        return (f"the file is a website's error message{_quoted(identity.excerpt)}, not a model file; download the "
                "model again with its direct download link")
    if kind is FileKind.LFS_POINTER:
        return ("the file is a Git LFS pointer, not the model itself; download the real file (on Hugging Face, the "
                "link with /resolve/ in it)")
    if kind is FileKind.TEXT:
        return f"the file is text{_quoted(identity.excerpt)}, not a model file; check that you picked the model file itself"
    if kind is FileKind.IMAGE:
        return f"the file is a {identity.label} image, not a model file; add {_FILE_OF[expected]}, not its preview"
    if kind is FileKind.EMPTY:
        return "the file is empty (0 bytes); download it again"
    if kind is FileKind.DAMAGED:
        return damaged(identity.problem or "it cannot be parsed")
    return ("the file is not a model file we know (neither a PyTorch .pt nor a .safetensors file); check that you "
            f"picked the {kind_noun(expected)} file itself")


def link_refusal(identity: FileIdentity, expected: FileKind = FileKind.HYPERNETWORK) -> str | None:
    """Like :func:`refusal`, worded for a download link (a web page where a file was expected)."""
    kind = identity.kind
    if kind is FileKind.WEB_PAGE:
        return "the link returned a web page, not a model file; use the direct download link"
    if kind is FileKind.ERROR_BODY:
        return (f"the link returned an error message instead of a model file{_quoted(identity.excerpt)}; use the "
                "direct download link")
    if kind is FileKind.LFS_POINTER:
        return ("the link returned a Git LFS pointer, not the model itself; use the direct download link (on Hugging "
                "Face, the one with /resolve/ in it)")
    if kind is FileKind.TEXT:
        return f"the link returned text instead of a model file{_quoted(identity.excerpt)}; use the direct download link"
    if kind is FileKind.IMAGE:
        return f"the link returned a {identity.label} image, not a model file; use the model's direct download link"
    if kind is FileKind.EMPTY:
        return "the link returned an empty file; use the direct download link"
    return refusal(identity, expected)
