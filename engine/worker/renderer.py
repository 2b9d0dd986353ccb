"""The generation pipeline: one UNet batch for several users' requests, each with its own settings and hypernets.

Why our own denoising loop instead of ``StableDiffusionPipeline.__call__``: one batch mixes requests that differ in
prompt, negative prompt, CFG scale, seeds and hypernet chain, and the stock loop has one of each per call.

Rows: a request contributes ``count`` images (seeds ``seed``, ``seed + 1``, ...).  The UNet sees ``2 x rows``
samples, ``[uncond rows..., cond rows...]``; both halves carry the row's hypernet chain (A1111 applies hypernets to
the unconditional branch too).  Each row has its own CPU ``torch.Generator`` seeded with its seed: it draws the start
latents and then any sampler noise, and DPM++ SDE gets one Brownian tree per row.  Prompts are encoded one distinct
text at a time.  Together this makes an image the same alone or inside any batch (up to float rounding of batched
kernels, ~1e-6 on CPU), and bit-identical when the same batch is rendered again.

Cancelling: ``should_stop(step)`` runs before every UNet pass.  ``True`` cancels everything (raises
:class:`Cancelled`); a collection of job ids cancels just those jobs: their rows leave the UNet batch (the rest keep
their exact images, since rows never share randomness) and they get no :class:`RenderOutput`.  When every job is
cancelled :class:`Cancelled` is raised.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from engine.fit import ModelShape, fit_note
from engine.hypernet import Hypernetwork
from engine.hypernet.attention import PerSampleHypernets, install_hypernet_processors
from engine.infotext import build_infotext
from engine.protocol import GenerateRequest, RenderSettings
from engine.samplers import SamplerSpec, resolve_sampler
from engine.worker.checkpoints import LoadedCheckpoint, load_checkpoint, resolve_device, resolve_dtype

__all__ = ["Cancelled", "RenderOutput", "Renderer", "RequestError", "make_scheduler"]

MAX_SEED = 2**64 - 1

OnStep = Callable[[int, int], None]
ShouldStop = Callable[[int], bool | Collection[int]]


class RequestError(ValueError):
    """A batch the engine cannot render as asked (incompatible settings, bad size, missing hypernet...)."""


class Cancelled(Exception):
    """The whole batch was cancelled between steps; nothing was produced."""


@dataclass(slots=True)
class RenderOutput:
    """One finished request: its images (PIL and PNG bytes with A1111 ``parameters`` text), seeds and warnings."""

    job_id: int
    images: list[Image.Image]
    pngs: list[bytes]
    seeds: list[int]
    warnings: list[str] = field(default_factory=list)


def make_scheduler(spec: SamplerSpec, base_config: Mapping[str, Any]) -> Any:
    """A fresh scheduler for ``spec`` from the checkpoint's scheduler config (never shared between batches)."""
    import diffusers

    cls = getattr(diffusers, spec.scheduler_class)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    return cls.from_config({**config, **spec.options})  # keys another scheduler class uses are ignored


@dataclass(slots=True)
class _Rows:
    """The batch flattened to image rows (parallel lists), built by ``Renderer._rows``."""

    job: list[int] = field(default_factory=list)
    seed: list[int] = field(default_factory=list)
    prompt: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    chain: list[list[tuple[Hypernetwork, float]]] = field(default_factory=list)


class Renderer:
    """A loaded checkpoint on one device, with hypernet processors installed on its UNet (once).

    Build with :meth:`load`.  Attributes the worker reads: ``device``, ``dtype`` (UNet/VAE/text encoder),
    ``hypernet_dtype`` (the dtype hypernets compute in), ``context_dim`` (768 for SD 1.x, 1024 for SD 2.x),
    ``attention_widths`` (self-attention widths of the UNet), ``shape`` (both, for the fit check),
    ``model_name``, ``model_hash``, ``checkpoint``.
    """

    def __init__(self, parts: LoadedCheckpoint, *, checkpoint: str, device: torch.device, dtype: torch.dtype,
                 hypernet_dtype: torch.dtype) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.hypernet_dtype = hypernet_dtype
        self.model_name: str = parts.model_name
        self.model_hash: str | None = parts.model_hash
        self.unet = parts.unet.to(device)
        self.vae = parts.vae.to(device)
        self.text_encoder = parts.text_encoder.to(device)
        self.tokenizer = parts.tokenizer
        self.scheduler_config: dict[str, Any] = dict(parts.scheduler_config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.context_dim = int(self.unet.config.cross_attention_dim)
        self.attention_widths = frozenset(
            m.to_k.in_features for m in self.unet.modules() if _is_attention(m) and not m.is_cross_attention)
        self.processor_count = install_hypernet_processors(self.unet)

    @property
    def shape(self) -> ModelShape:
        """What hypernet sizes can match on this checkpoint (see :mod:`engine.fit`)."""
        return ModelShape(self.context_dim, self.attention_widths)

    @classmethod
    def load(cls, checkpoint: str, device: str = "auto", dtype: str = "auto", hypernet_dtype: str = "auto") -> Renderer:
        """Load a checkpoint ("tiny", a diffusers folder, a .safetensors/.ckpt file or a hub id) onto a device.

        ``device`` auto = CUDA when available; ``dtype`` auto = float16 on CUDA, float32 on CPU; ``hypernet_dtype``
        auto = the UNet's dtype on CUDA (A1111's autocast behaviour, much faster), float32 on CPU.
        """
        dev = resolve_device(device)
        model_dtype = resolve_dtype(dtype, dev)
        hn_dtype = model_dtype if hypernet_dtype in ("", "auto") else resolve_dtype(hypernet_dtype, dev,
                                                                                      what="hypernet dtype")
        if dev.type != "cuda" and hypernet_dtype in ("", "auto"):
            hn_dtype = torch.float32
        parts = load_checkpoint(checkpoint, model_dtype)
        return cls(parts, checkpoint=checkpoint, device=dev, dtype=model_dtype, hypernet_dtype=hn_dtype)

    # ---- checks -------------------------------------------------------------------------------------------

    def validate(self, requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork]) -> SamplerSpec:
        """Raise :class:`RequestError` (a ValueError) for a batch this engine cannot render; return its sampler."""
        if not requests:
            raise RequestError("empty batch: nothing to render")
        first_req = requests[0]
        first = first_req.settings
        for req in requests[1:]:
            if req.batch_key() != first_req.batch_key():
                raise RequestError(f"jobs {first_req.job_id} and {req.job_id} cannot share a batch: size, steps and "
                                   f"sampler must match ({first_req.batch_key()} vs {req.batch_key()})")
        if len({r.job_id for r in requests}) != len(requests):
            raise RequestError("the same job id appears twice in one batch")
        spec = resolve_sampler(first.sampler)
        if first.steps < 1:
            raise RequestError(f"steps must be at least 1, got {first.steps}")
        f = self.vae_scale_factor
        if min(first.width, first.height) < f or first.width % f or first.height % f:
            raise RequestError(f"width and height must be positive multiples of {f}, got {first.width}x{first.height}")
        for req in requests:
            s = req.settings
            if s.count < 1:
                raise RequestError(f"job {req.job_id}: count must be at least 1, got {s.count}")
            if not math.isfinite(s.cfg_scale):
                raise RequestError(f"job {req.job_id}: CFG scale must be a finite number, got {s.cfg_scale}")
            if s.seed < 0 or s.seed + s.count - 1 > MAX_SEED:
                raise RequestError(f"job {req.job_id}: seeds must lie between 0 and {MAX_SEED}, got {s.seed}")
            for ref in s.hypernets:
                if ref.multiplier != 0 and ref.sha256 not in hypernets:
                    raise RequestError(f"job {req.job_id}: hypernetwork {ref.name!r} ({ref.sha256[:10]}) is not loaded")
                if not math.isfinite(ref.multiplier):
                    raise RequestError(f"job {req.job_id}: multiplier of {ref.name!r} must be finite")
        return spec

    def hypernet_warnings(self, hn: Hypernetwork, name: str) -> list[str]:
        """Why a hypernet does less than its user expects on this model (sizes that match no attention layer)."""
        note = fit_note(hn.sizes, self.shape)
        return [] if note is None else [f"hypernetwork {name!r} was {note}"]

    # ---- generation ---------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork], *,
                 on_step: OnStep | None = None, should_stop: ShouldStop | None = None) -> list[RenderOutput]:
        """Render compatible requests (same size, steps and sampler) in one UNet batch; see the module docstring.

        ``hypernets`` maps ``HypernetRef.sha256`` to a loaded hypernetwork (ideally already on ``device`` in
        ``hypernet_dtype``).  ``on_step(done, steps)`` runs after each sampling step.  Returns one output per request
        not cancelled, in request order.  Raises :class:`RequestError` for a bad batch, :class:`Cancelled`, and lets
        everything else (``torch.cuda.OutOfMemoryError`` included) propagate.
        """
        spec = self.validate(requests, hypernets)
        warnings = {r.job_id: self._request_warnings(r, hypernets) for r in requests}
        rows = self._rows(requests, hypernets)
        with torch.no_grad():  # not inference_mode: the hypernet processor keys its cache on tensor versions
            embeds = self._encode(rows, warnings)
            latents, kept = self._denoise(requests[0].settings, spec, rows, embeds, on_step, should_stop)
            return self._finish(requests, rows, latents, kept, spec, warnings)

    def _request_warnings(self, req: GenerateRequest, hypernets: Mapping[str, Hypernetwork]) -> list[str]:
        out: list[str] = []
        used = [ref for ref in req.settings.hypernets if ref.multiplier != 0]
        for digest in dict.fromkeys(ref.sha256 for ref in used):
            name = next(r.name for r in used if r.sha256 == digest)
            out += self.hypernet_warnings(hypernets[digest], name)
        return out

    @staticmethod
    def _rows(requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork]) -> _Rows:
        rows = _Rows()
        for req in requests:
            s = req.settings
            # Multiplier 0 is an identity in A1111 (x + y * 0); leaving it out saves work and changes nothing.
            chain = [(hypernets[ref.sha256], float(ref.multiplier)) for ref in s.hypernets if ref.multiplier != 0]
            text = s.encoder_prompt
            for k in range(s.count):
                rows.job.append(req.job_id)
                rows.seed.append(s.seed + k)
                rows.prompt.append(text)
                rows.negative.append(s.negative_prompt)
                rows.scale.append(float(s.cfg_scale))
                rows.chain.append(chain)
        return rows

    def _encode(self, rows: _Rows, warnings: Mapping[int, list[str]]) -> torch.Tensor:
        """Text embeddings ``[negatives..., prompts...]``; each distinct text is encoded alone (batch-independent)."""
        tok = self.tokenizer
        limit = tok.model_max_length
        embeddings: dict[str, torch.Tensor] = {}
        too_long: dict[str, bool] = {}
        for job, negative, prompt in zip(rows.job, rows.negative, rows.prompt, strict=True):
            for text, what in ((negative, "negative prompt"), (prompt, "prompt")):
                if text not in embeddings:
                    ids = tok(text, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
                    embeddings[text] = self.text_encoder(ids.input_ids.to(self.device))[0][0]
                    too_long[text] = len(tok(text, truncation=False, verbose=False).input_ids) > limit
                msg = f"the {what} is longer than {limit - 2} tokens; the rest was ignored"
                if too_long[text] and msg not in warnings[job]:
                    warnings[job].append(msg)
        return torch.stack([embeddings[t] for t in rows.negative + rows.prompt])

    def _denoise(self, first: RenderSettings, spec: SamplerSpec, rows: _Rows, embeds: torch.Tensor,
                 on_step: OnStep | None, should_stop: ShouldStop | None) -> tuple[torch.Tensor, list[int]]:
        """Run the sampler; return the final latents of all rows and the rows still wanted (not cancelled)."""
        n = len(rows.seed)
        scheduler = make_scheduler(spec, self.scheduler_config)
        scheduler.set_timesteps(first.steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(s) for s in rows.seed]
        shape = (1, self.unet.config.in_channels, first.height // self.vae_scale_factor,
                 first.width // self.vae_scale_factor)
        latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        latents = latents.to(self.device) * scheduler.init_noise_sigma
        if spec.noise == "brownian":
            scheduler.noise_sampler_seed = list(rows.seed)  # one Brownian tree per row (diffusers' batched tree)
        step_kwargs: dict[str, Any] = {"generator": generators} if spec.noise == "generator" else {}
        scales = torch.tensor(rows.scale, dtype=torch.float32, device=self.device).view(-1, 1, 1, 1)
        active = list(range(n))  # rows still rendered (others belong to jobs cancelled mid-batch)
        phn = self._chains(rows, active)
        done = 0
        passes = len(scheduler.timesteps)  # > steps for second-order samplers (two UNet passes per step) and PLMS
        with warnings.catch_warnings():
            # torchsde complains about float rounding at the ends of the Brownian interval; harmless.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            for p, t in enumerate(scheduler.timesteps, start=1):
                if should_stop is not None:
                    active = self._still_wanted(should_stop(done), rows, active)
                    if len(phn.chains) != 2 * len(active):
                        phn = self._chains(rows, active)
                latents = self._step(scheduler, t, latents, embeds, scales, active, phn, step_kwargs)
                now_done = p * first.steps // passes
                if now_done > done:
                    done = now_done
                    if on_step is not None:
                        on_step(done, first.steps)
        return latents, active

    @staticmethod
    def _still_wanted(stop: bool | Collection[int], rows: _Rows, active: list[int]) -> list[int]:
        """Apply ``should_stop``'s answer: True cancels all, a set of job ids drops those jobs' rows."""
        if isinstance(stop, bool):
            if stop:
                raise Cancelled()
            return active
        if not stop:
            return active
        cancelled = set(stop)
        keep = [i for i in active if rows.job[i] not in cancelled]
        if not keep:
            raise Cancelled()
        return keep

    def _step(self, scheduler: Any, t: torch.Tensor, latents: torch.Tensor, embeds: torch.Tensor, scales: torch.Tensor,
              active: list[int], phn: PerSampleHypernets, step_kwargs: dict[str, Any]) -> torch.Tensor:
        """One UNet pass over the active rows (uncond + cond), per-row CFG, one scheduler step over all rows."""
        n = latents.shape[0]
        if len(active) == n:
            x, emb, s = latents, embeds, scales
        else:
            idx = torch.tensor(active, device=self.device)
            x, s = latents.index_select(0, idx), scales.index_select(0, idx)
            emb = embeds.index_select(0, torch.cat([idx, idx + n]))
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t).to(self.dtype)
        out = self.unet(x_in, t, encoder_hidden_states=emb, cross_attention_kwargs={"hypernets": phn}).sample
        uncond, cond = out.float().chunk(2)
        guided = uncond + s * (cond - uncond)
        if len(active) != n:
            full = torch.zeros_like(latents)  # cancelled rows get a harmless prediction; their result is dropped
            full.index_copy_(0, idx, guided)
            guided = full
        return scheduler.step(guided, t, latents, **step_kwargs).prev_sample

    def _chains(self, rows: _Rows, active: Sequence[int]) -> PerSampleHypernets:
        chains = [rows.chain[i] for i in active]
        return PerSampleHypernets(chains + chains, compute_dtype=self.hypernet_dtype)

    def _decode(self, latent: torch.Tensor) -> Image.Image:
        """One image at a time: bounded VAE memory, and a row's pixels do not depend on its batch-mates."""
        cfg = self.vae.config
        z = latent.unsqueeze(0) / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None):
            z = z + cfg.shift_factor
        pixels = self.vae.decode(z.to(self.vae.dtype)).sample[0].float()
        if not bool(torch.isfinite(pixels).all()) and self.vae.dtype != torch.float32:
            # Some VAEs overflow in half precision (A1111 then upcasts its VAE for good, and so do we).
            self.vae.to(torch.float32)
            pixels = self.vae.decode(z.float()).sample[0]
        array = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array, mode="RGB")

    def _finish(self, requests: Sequence[GenerateRequest], rows: _Rows, latents: torch.Tensor, kept_rows: list[int],
                spec: SamplerSpec, warnings: Mapping[int, list[str]]) -> list[RenderOutput]:
        kept = set(kept_rows)
        outputs: list[RenderOutput] = []
        for req in requests:
            idx = [i for i, job in enumerate(rows.job) if job == req.job_id and i in kept]
            if not idx:
                continue
            images = [self._decode(latents[i]) for i in idx]
            seeds = [rows.seed[i] for i in idx]
            pngs = [self._png(image, self.infotext(req, spec.name, seed)) for image, seed in zip(images, seeds, strict=True)]
            outputs.append(RenderOutput(req.job_id, images, pngs, seeds, list(warnings[req.job_id])))
        return outputs

    def infotext(self, req: GenerateRequest, sampler: str, seed: int) -> str:
        """A1111's ``parameters`` text for one image of ``req`` (hypernet tags stay in the prompt line)."""
        s = req.settings
        return build_infotext(s.infotext_prompt, s.negative_prompt, s.steps, sampler, s.cfg_scale, seed, s.width,
                              s.height, self.model_name, self.model_hash, extra={"RNG": "CPU"})

    @staticmethod
    def _png(image: Image.Image, parameters: str) -> bytes:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()


def _is_attention(module: torch.nn.Module) -> bool:
    return hasattr(module, "to_k") and hasattr(module, "is_cross_attention")
