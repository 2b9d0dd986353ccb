"""The generation pipeline: one UNet batch for several users' requests, each with its own settings and hypernets.

Why our own pipeline instead of ``StableDiffusionPipeline.__call__``: one batch mixes requests that differ in
prompt, negative prompt, CFG scale, seeds, noise settings, clip skip and hypernet chain, and the stock pipeline
has one of each per call; and pasted A1111 infotexts must give A1111's latents, which diffusers' schedulers do
not (``docs/sampling.md``).  The pieces:

* :class:`engine.worker.batch_rows.BatchRows` — the batch as image rows (A1111's seeds per image) and the distinct
  prompts they need;
* :class:`engine.conditioning.PromptEncoder` — A1111's prompt semantics, every prompt of the batch in one text
  encoder pass;
* :mod:`engine.sampling` — A1111's noise, schedules, samplers and CFG, per row;
* :class:`engine.worker.unet_model.BatchUNet` — the UNet over the model rows, each with its own context and
  hypernets.

Every random number of a row comes from that row's own generators, and contexts of different lengths never share a
UNet call, so an image is the same alone or inside any batch (up to float rounding of batched kernels, ~1e-6 on
CPU), and bit-identical when the same batch is rendered again.

Cancelling: ``should_stop(step)`` runs before every model evaluation.  ``True`` cancels everything (raises
:class:`Cancelled`); a collection of job ids cancels just those jobs: their rows leave the UNet batch (the rest keep
their exact images, since rows never share randomness) and they get no :class:`RenderOutput`.  When every job is
cancelled :class:`Cancelled` is raised.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from engine.checkpoints import HashCache
from engine.conditioning import (
    ConditioningError,
    Embedding,
    EmbeddingSet,
    PromptEncoder,
    PromptRequest,
    PromptTooLong,
    WeightedSchedule,
)
from engine.fit import ModelShape, fit_note
from engine.hypernet import Hypernetwork
from engine.hypernet.attention import install_hypernet_processors
from engine.lora import LoraNetwork
from engine.protocol import GenerateRequest
from engine.samplers import resolve_sampler_and_schedule
from engine.sampling import (
    Evaluation,
    RowGuidance,
    SamplingCancelled,
    SamplingPlan,
    StepReport,
    alphas_cumprod_from_config,
    plan_sampling,
)
from engine.settings_infotext import settings_infotext
from engine.worker.batch_rows import BatchRows, EmbeddingKey, embedding_key
from engine.worker.checkpoints import LoadedCheckpoint, load_checkpoint, resolve_device, resolve_dtype
from engine.worker.compile import CompileSettings
from engine.worker.images import PngEncoder, decode_latents
from engine.worker.unet_model import BatchUNet
from engine.worker.unet_runner import UNetRunner

__all__ = ["MAX_SEED", "Cancelled", "RenderOutput", "RenderedJob", "Renderer", "RequestError"]

MAX_SEED = 2**64 - 1
_ENCODERS_KEPT = 8  # prompt encoders of recent embedding sets (one per guild that has embeddings, usually)

OnStep = Callable[[int, int], None]
ShouldStop = Callable[[int], bool | Collection[int]]
Cancelled = SamplingCancelled  # the whole batch was cancelled between evaluations; nothing was produced


class RequestError(ValueError):
    """A batch the engine cannot render as asked (incompatible settings, bad size, missing hypernet...).

    ``job_id`` names the one job at fault when there is one, so the worker can fail it and render the rest; the
    message is then about that job alone and reads well to its user.
    """

    def __init__(self, message: str, job_id: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


@dataclass(slots=True)
class RenderOutput:
    """One finished request: its images (PIL and PNG bytes with A1111 ``parameters`` text), seeds and warnings."""

    job_id: int
    images: list[Image.Image]
    pngs: list[bytes]
    seeds: list[int]
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RenderedJob:
    """One request whose device work is over: its decoded images with the ``parameters`` text each PNG will carry.

    Why a stage of its own: PNG encoding is CPU work that need not hold up the device, so the worker hands these to
    its finishing thread (:meth:`Renderer.encode`) and starts the next batch (``docs/performance.md``).
    """

    job_id: int
    images: list[Image.Image]
    parameters: list[str]
    seeds: list[int]
    warnings: list[str] = field(default_factory=list)


class Renderer:
    """A loaded checkpoint on one device, with hypernet processors installed on its UNet (once).

    Build with :meth:`load`.  Attributes the worker reads: ``device``, ``dtype`` (UNet/VAE/text encoder),
    ``hypernet_dtype`` (the dtype hypernets compute in), ``context_dim`` (768 for SD 1.x, 1024 for SD 2.x),
    ``attention_widths`` (self-attention widths of the UNet), ``shape`` (both, for the fit check),
    ``model_name``, ``model_hash``, ``checkpoint``; ``encoder`` is the prompt encoder (with its embeddings).
    """

    def __init__(self, parts: LoadedCheckpoint, *, checkpoint: str, device: torch.device, dtype: torch.dtype,
                 hypernet_dtype: torch.dtype, embeddings: EmbeddingSet | None = None,
                 compile_settings: CompileSettings | None = None) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.hypernet_dtype = hypernet_dtype
        self.model_name: str = parts.model_name
        self.model_hash: str | None = parts.model_hash
        self.family: str | None = parts.family
        self.vae_fields = {"VAE hash": parts.vae_hash, "VAE": parts.vae_name}  # A1111's, when a separate VAE is used
        self.unet = parts.unet.to(device)
        self.vae = parts.vae.to(device)
        self.text_encoder = parts.text_encoder.to(device)
        self.tokenizer = parts.tokenizer
        self.base_embeddings = embeddings or EmbeddingSet()
        self.encoder = PromptEncoder(self.text_encoder, parts.tokenizer, embeddings)
        self._encoders: OrderedDict[EmbeddingKey, PromptEncoder] = OrderedDict()
        self.alphas_cumprod = alphas_cumprod_from_config(parts.scheduler_config)
        self.v_prediction = parts.scheduler_config.get("prediction_type", "epsilon") == "v_prediction"
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.vae_chunk = 4  # images per VAE call (engine/worker/images.py)
        self.context_dim = int(self.unet.config.cross_attention_dim)
        self.attention_widths = frozenset(
            m.to_k.in_features for m in self.unet.modules() if _is_attention(m) and not m.is_cross_attention)
        self.processor_count = install_hypernet_processors(self.unet)
        self.unet_runner = UNetRunner(self.unet, device=device, hypernet_dtype=hypernet_dtype,
                                      settings=compile_settings)
        self.png_encoder = PngEncoder()

    @property
    def shape(self) -> ModelShape:
        """What hypernet sizes can match on this checkpoint (see :mod:`engine.fit`)."""
        return ModelShape(self.context_dim, self.attention_widths)

    @property
    def nbytes(self) -> int:
        """Bytes of the model's weights (what a resident checkpoint costs on its device)."""
        return sum(t.numel() * t.element_size() for m in (self.unet, self.vae, self.text_encoder)
                   for t in (*m.parameters(), *m.buffers()))

    def move(self, on_device: bool) -> None:
        """Move the weights to the device (``True``) or park them in CPU memory (``False``; nothing renders then)."""
        target = self.device if on_device else torch.device("cpu")
        if not on_device:
            self.unet_runner.release()  # its slot tensors and graphs live on the device too
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(target)

    @classmethod
    def load(cls, checkpoint: str, device: str = "auto", dtype: str = "auto", hypernet_dtype: str = "auto", *,
             embeddings: EmbeddingSet | None = None, vae: str = "", prediction: str = "auto",
             hash_cache: HashCache | None = None, compile: str = "off", compile_cache_dir: str | None = None
             ) -> Renderer:
        """Load a checkpoint ("tiny", a diffusers folder, a .safetensors file or a hub id) onto a device.

        ``vae``: a separate VAE file ("" = the checkpoint's own); ``prediction``: ``auto``, ``epsilon`` or
        ``v_prediction``; ``hash_cache``: where A1111's file hashes are remembered (see :mod:`engine.checkpoints`);
        ``compile``: ``off`` (eager), ``auto`` (compiled on CUDA), ``on`` or ``cudagraphs``, with the compile cache in
        ``compile_cache_dir`` (see :mod:`engine.worker.compile`; the worker passes its configuration's).

        ``device`` auto = CUDA when available; ``dtype`` auto = float16 on CUDA, float32 on CPU; ``hypernet_dtype``
        auto = the UNet's dtype on CUDA (A1111's autocast behaviour, much faster), float32 on CPU.
        """
        dev = resolve_device(device)
        model_dtype = resolve_dtype(dtype, dev)
        hn_dtype = model_dtype if hypernet_dtype in ("", "auto") else resolve_dtype(hypernet_dtype, dev,
                                                                                      what="hypernet dtype")
        if dev.type != "cuda" and hypernet_dtype in ("", "auto"):
            hn_dtype = torch.float32
        parts = load_checkpoint(checkpoint, model_dtype, vae=Path(vae) if vae else None,
                                prediction=None if prediction == "auto" else prediction, hash_cache=hash_cache)
        settings = CompileSettings.from_option(compile, dev, cache_dir=compile_cache_dir)
        return cls(parts, checkpoint=checkpoint, device=dev, dtype=model_dtype, hypernet_dtype=hn_dtype,
                   embeddings=embeddings, compile_settings=settings)

    def warm_up(self, sizes: Sequence[tuple[int, int]]) -> list[tuple[str, float]]:
        """Compile the UNet for images of these ``(width, height)`` before serving (nothing when compiling is off).

        Under ``torch.no_grad()``, the grad mode :meth:`generate` runs in (dynamo guards on it).  Returns what was
        compiled and the seconds each took.
        """
        latents = [(h // self.vae_scale_factor, w // self.vae_scale_factor) for w, h in sizes]
        with torch.no_grad():
            return self.unet_runner.warm_up(latents, dtype=self.dtype)

    # ---- checks -------------------------------------------------------------------------------------------

    def encoder_for(self, request: GenerateRequest, embeddings: Mapping[str, Embedding]) -> PromptEncoder:
        """The prompt encoder that knows this job's embeddings under the names its guild gave them.

        ``embeddings`` maps ``EmbeddingRef.sha256`` to the loaded vectors.  Encoders are built per embedding set
        and the last few kept (building one tokenizes every name, a few ms)."""
        key = embedding_key(request)
        if not key:
            return self.encoder
        found = self._encoders.get(key)
        if found is None:
            own = [dataclasses.replace(embeddings[sha], name=name) for name, sha in key]
            names = {name for name, _ in key}
            merged = EmbeddingSet([*(e for e in self.base_embeddings.values() if e.name not in names), *own])
            found = self._encoders[key] = PromptEncoder(self.text_encoder, self.tokenizer, merged)
            if len(self._encoders) > _ENCODERS_KEPT:
                self._encoders.popitem(last=False)
        self._encoders.move_to_end(key)
        return found

    def validate(self, requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork],
                 loras: Mapping[str, LoraNetwork] | None = None,
                 embeddings: Mapping[str, Embedding] | None = None) -> SamplingPlan:
        """Raise :class:`RequestError` (a ValueError) for a batch this engine cannot render; return its plan."""
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
        job = first_req.job_id if len(requests) == 1 else None
        try:
            spec, schedule = resolve_sampler_and_schedule(first.sampler, first.schedule)
            plan = plan_sampling(spec, schedule, first.steps, self.alphas_cumprod)
        except ValueError as exc:
            raise RequestError(str(exc), job) from None
        f = self.vae_scale_factor
        if min(first.width, first.height) < f or first.width % f or first.height % f:
            raise RequestError(f"width and height must be positive multiples of {f}, got {first.width}x{first.height}",
                               job)
        for req in requests:
            self._validate_request(req, hypernets, loras or {}, embeddings or {}, plan)
        return plan

    def _validate_request(self, req: GenerateRequest, hypernets: Mapping[str, Hypernetwork],
                          loras: Mapping[str, LoraNetwork], embeddings: Mapping[str, Embedding],
                          plan: SamplingPlan) -> None:
        s, job = req.settings, req.job_id
        if s.count < 1:
            raise RequestError(f"count must be at least 1, got {s.count}", job)
        if not math.isfinite(s.cfg_scale) or not math.isfinite(s.subseed_strength):
            raise RequestError("CFG scale and variation strength must be finite numbers", job)
        seeds = s.image_seeds()
        for what, values in (("seeds", [i.seed for i in seeds]), ("variation seeds", [i.subseed for i in seeds])):
            if any(v is not None and not 0 <= v <= MAX_SEED for v in values):
                raise RequestError(f"{what} must lie between 0 and {MAX_SEED}", job)
        _check_models(req, hypernets, loras, embeddings)
        encoder = self.encoder_for(req, embeddings)
        for text, positive in ((s.encoder_prompt, True), (s.negative_prompt, False)):
            try:
                encoder.plan(PromptRequest(text, plan.prompt_schedule_steps, s.clip_skip, positive))
            except PromptTooLong as exc:
                side = "prompt" if positive else "negative prompt"
                raise RequestError(f"the {side} is too long: it needs {exc.chunks} chunks of 75 tokens (counting each "
                                   f"[a:b] / [a|b] text), and at most {exc.limit} are allowed; shorten it", job) from None
            except ConditioningError as exc:
                side = "prompt" if positive else "negative prompt"
                raise RequestError(f"the {side} cannot be used: {exc}", job) from None

    def hypernet_warnings(self, hn: Hypernetwork, name: str) -> list[str]:
        """Why a hypernet does less than its user expects on this model (sizes that match no attention layer)."""
        note = fit_note(hn.sizes, self.shape)
        return [] if note is None else [f"hypernetwork {name!r} was {note}"]

    # ---- generation ---------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork], *,
                 loras: Mapping[str, LoraNetwork] | None = None, embeddings: Mapping[str, Embedding] | None = None,
                 on_step: OnStep | None = None,
                 should_stop: ShouldStop | None = None,
                 on_report: Callable[[StepReport], None] | None = None) -> list[RenderOutput]:
        """:meth:`render` and :meth:`encode` in one call: the finished requests with their PNGs."""
        return self.encode(self.render(requests, hypernets, loras=loras, embeddings=embeddings, on_step=on_step,
                                       should_stop=should_stop, on_report=on_report))

    def encode(self, jobs: Sequence[RenderedJob]) -> list[RenderOutput]:
        """The PNGs of rendered requests, every image of them encoded together (:class:`PngEncoder`); no device work,
        so it may run on another thread while the next batch renders."""
        pngs = iter(self.png_encoder.encode([item for job in jobs for item in zip(job.images, job.parameters,
                                                                                   strict=True)]))
        return [RenderOutput(job.job_id, job.images, [next(pngs) for _ in job.images], job.seeds, job.warnings)
                for job in jobs]

    def render(self, requests: Sequence[GenerateRequest], hypernets: Mapping[str, Hypernetwork], *,
               loras: Mapping[str, LoraNetwork] | None = None, embeddings: Mapping[str, Embedding] | None = None,
               on_step: OnStep | None = None,
               should_stop: ShouldStop | None = None,
               on_report: Callable[[StepReport], None] | None = None) -> list[RenderedJob]:
        """Render compatible requests (same size, steps and sampler) in one UNet batch; see the module docstring.

        ``hypernets`` maps ``HypernetRef.sha256`` to a loaded hypernetwork (ideally already on ``device`` in
        ``hypernet_dtype``), ``loras`` and ``embeddings`` map ``LoraRef.sha256`` / ``EmbeddingRef.sha256`` to the
        loaded LoRA networks and embeddings.  ``on_step(done, total)``
        runs after each sampler step (``total`` is the sampler's step count: A1111's DDIM/PLMS/UniPC grids can
        differ from ``steps`` by one); ``on_report`` gets each step's latents and denoised prediction (rows in
        request order; for previews and tests).  Returns one rendered job per request not cancelled, in request order
        (images decoded, PNGs not yet encoded).
        Raises :class:`RequestError` for a bad batch, :class:`Cancelled`, and lets everything else
        (``torch.cuda.OutOfMemoryError`` included) propagate.
        """
        plan = self.validate(requests, hypernets, loras, embeddings)
        encoders = {r.job_id: self.encoder_for(r, embeddings or {}) for r in requests}
        notes = {r.job_id: self._request_warnings(r, hypernets, loras or {}, encoders[r.job_id]) for r in requests}
        rows = BatchRows.build(requests, hypernets, prompt_steps=plan.prompt_schedule_steps, device=self.device,
                               loras=loras)
        first = requests[0].settings
        with torch.no_grad():  # not inference_mode: the hypernet processor keys its cache on tensor versions
            conds = self._encode(rows, {embedding_key(r): encoders[r.job_id] for r in requests})
            guidance = [RowGuidance(row.cfg_scale, tuple(part.weight for part in conds[row.prompt]))
                        for row in rows.rows]
            model = BatchUNet(self.unet_runner, rows, conds, dtype=self.dtype, view=plan.view,
                              v_prediction=self.v_prediction)
            guided = plan.guided_model(model, guidance, should_stop=_row_stop(should_stop, rows))
            shape = (int(self.unet.config.in_channels), first.height // self.vae_scale_factor,
                     first.width // self.vae_scale_factor)
            noise = plan.draw_noise([row.seed for row in rows.rows], shape, self.device)
            with warnings.catch_warnings():
                # torchsde complains about float rounding at the ends of the Brownian interval; harmless.
                warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
                latents = plan.run(guided, noise, _step_report(on_step, on_report))
            for req in requests:  # LoRA modules that did not fit this model, for the jobs that used that LoRA
                for name in dict.fromkeys(x.name for x in req.settings.loras if x.name in model.lora_skipped):
                    notes[req.job_id].append(f"LoRA {name!r}: {len(model.lora_skipped[name])} module(s) skipped, "
                                             "their update does not fit this model")
            return self._finish(requests, rows, latents, set(guided.active), notes, encoders)

    @staticmethod
    def _encode(rows: BatchRows, encoders: Mapping[EmbeddingKey, PromptEncoder]) -> list[list[WeightedSchedule]]:
        """Every prompt of the batch, one text-encoder pass per embedding set (usually one), in prompt order."""
        conds: list[list[WeightedSchedule] | None] = [None] * len(rows.prompts)
        for key, encoder in encoders.items():
            picked = [p for p, k in enumerate(rows.encoders) if k == key]
            for p, cond in zip(picked, encoder.encode([rows.prompts[p] for p in picked]), strict=True):
                conds[p] = cond
        return [c for c in conds if c is not None]

    def _request_warnings(self, req: GenerateRequest, hypernets: Mapping[str, Hypernetwork],
                          loras: Mapping[str, LoraNetwork], encoder: PromptEncoder) -> list[str]:
        out: list[str] = []
        own = {e.name for e in req.settings.embeddings}
        out += [f"embedding {skip.name!r} cannot be used with this model: {skip.reason}"
                for skip in encoder.skipped_embeddings if skip.name in own]
        used = [ref for ref in req.settings.hypernets if ref.multiplier != 0]
        for digest in dict.fromkeys(ref.sha256 for ref in used):
            name = next(r.name for r in used if r.sha256 == digest)
            out += self.hypernet_warnings(hypernets[digest], name)
        for digest in dict.fromkeys(x.sha256 for x in req.settings.loras if x.sha256 in loras):
            out += [w for w in loras[digest].warnings if w not in out]  # e.g. how a DoRA file was applied
        return out

    def _finish(self, requests: Sequence[GenerateRequest], rows: BatchRows, latents: torch.Tensor, kept: set[int],
                notes: Mapping[int, list[str]], encoders: Mapping[int, PromptEncoder]) -> list[RenderedJob]:
        wanted = [i for i in range(len(rows)) if i in kept]  # rows of jobs not cancelled, decoded together in chunks
        pictures = decode_latents(self.vae, latents[wanted], chunk=self.vae_chunk) if wanted else []
        by_row = dict(zip(wanted, pictures, strict=True))
        jobs: list[RenderedJob] = []
        for req in requests:
            idx = [i for i in rows.of_job(req.job_id) if i in kept]
            if not idx:
                continue
            s = req.settings
            used = encoders[req.job_id].embeddings_used([PromptRequest(s.encoder_prompt, 1, s.clip_skip),
                                                         PromptRequest(s.negative_prompt, 1, s.clip_skip, positive=False)])
            known = {e.name: e.short_hash for e in s.embeddings}
            hashes = [(e.name, h) for e in used if (h := known.get(e.name) or e.short_hash)]
            texts = [settings_infotext(s, k, model_name=self.model_name, model_hash=self.model_hash, embeddings=hashes,
                                       extra=self.vae_fields) for k in range(len(idx))]
            jobs.append(RenderedJob(req.job_id, [by_row[i] for i in idx], texts, [rows.rows[i].seed.seed for i in idx],
                                    list(notes[req.job_id])))
        return jobs


def _check_models(req: GenerateRequest, hypernets: Mapping[str, Hypernetwork], loras: Mapping[str, LoraNetwork],
                  embeddings: Mapping[str, Embedding]) -> None:
    """Every model file the job needs is loaded and its numbers are sane; RequestError naming the job otherwise."""
    s, job = req.settings, req.job_id
    for net in s.hypernets:
        if net.multiplier != 0 and net.sha256 not in hypernets:
            raise RequestError(f"hypernetwork {net.name!r} ({net.sha256[:10]}) is not loaded", job)
        if not math.isfinite(net.multiplier):
            raise RequestError(f"the multiplier of {net.name!r} must be finite", job)
    for lora in s.loras:
        if not (math.isfinite(lora.te) and math.isfinite(lora.unet)):
            raise RequestError(f"the multipliers of the LoRA {lora.name!r} must be finite", job)
        if (lora.te != 0 or lora.unet != 0) and lora.sha256 not in loras:
            raise RequestError(f"LoRA {lora.name!r} ({lora.sha256[:10]}) is not loaded", job)
        if lora.dyn is not None and lora.dyn < 1:
            raise RequestError(f"the dyn rank of the LoRA {lora.name!r} must be positive", job)
    for embedding in s.embeddings:
        if embedding.sha256 not in embeddings:
            raise RequestError(f"embedding {embedding.name!r} ({embedding.sha256[:10]}) is not loaded", job)


def _row_stop(should_stop: ShouldStop | None, rows: BatchRows) -> Callable[[Evaluation], bool | list[int]] | None:
    """The worker's per-step, per-job answer as the sampler's per-evaluation, per-row one."""
    if should_stop is None:
        return None

    def ask(at: Evaluation) -> bool | list[int]:
        answer = should_stop(at.step)
        if isinstance(answer, bool):
            return answer
        jobs = set(answer)
        return [i for i, row in enumerate(rows.rows) if row.job_id in jobs]

    return ask


def _step_report(on_step: OnStep | None, on_report: Callable[[StepReport], None] | None
                 ) -> Callable[[StepReport], None] | None:
    if on_step is None and on_report is None:
        return None

    def report(step: StepReport) -> None:
        if on_report is not None:
            on_report(step)
        if on_step is not None:
            on_step(step.done, step.total)

    return report


def _is_attention(module: torch.nn.Module) -> bool:
    return hasattr(module, "to_k") and hasattr(module, "is_cross_attention")
