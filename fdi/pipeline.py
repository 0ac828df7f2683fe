"""FDI restoration with diffusers: VAE-encode → DDIM inversion → guided DDIM sampling → decode.

:class:`FDIRestorationPipeline` holds the frozen SD 1.5 / 2.1 / SDXL parts (VAE, text encoder(s), tokenizer(s),
UNet, a DDIM schedule) and restores image batches with one or several FDI adapters:

1. pad to a multiple of 64 (:func:`fdi.sampling.pad_to_multiple`), VAE-encode (posterior mode);
2. DDIM inversion from the clean level to the first sampling timestep (no CFG, no guidance);
3. DDIM sampling (η = 0) down to the clean level, each adapter guiding the steps of its window
   (:func:`fdi.restoration.guidance_windows`, :func:`fdi.sampling.guided_step_range`), CFG
   ``ε_u + cfg·(ε_c − ε_u)`` when ``cfg ≠ 1``;
4. decode, crop back to ``H × W``.

Every rule (timesteps, ends, guided steps, conversions, padding) is :mod:`fdi.sampling`'s, shared
with the ComfyUI nodes; the loops run in float32 whatever the UNet's dtype. Adapters run once per
image batch in float32 (:class:`AdapterUse`: adapter, FDI, weight; ``composite`` sums their
guidance, ``progressive`` restores with one after the other).

Loading: :mod:`fdi.models` (a diffusers folder or a single-file checkpoint, offline, safetensors only).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch

from .adapter import FDIAdapter, FDIGuidance
from .conditioning import Conditioning, concat, encode_prompt, encode_text, unet_kwargs
from .diffusers_backend import DiffusersGuidance, check_adapter_for_unet, check_unet
from .errors import FDIError
from .families import family_title
from .files import PathLike
from .images import check_image_batch
from .models import load_sd, place, vae_dtype, vae_encode
from .progress import ProgressCallback, report
from .restoration import (
    AdapterUse,
    GuidanceWindowNote,
    Window,
    check_restore_inputs,
    detect_base_family,
)
from .sampling import (
    CLEAN_ALPHA,
    PREDICTION_TYPES,
    SD2_STEPS_OFFSET,
    SD2_TIMESTEP_SPACING,
    check_steps,
    ddim_step,
    ddim_timesteps,
    inversion_timesteps,
    pad_to_multiple,
    step_selections,
)
from .tiles import DEFAULT_TILE_OVERLAP, LATENT_SCALE, TileCrops, Tiling, check_tiling, optional_tiling


class FDIRestorationPipeline:
    """SD 1.5 / SD 2.1 / SDXL + FDI adapters → restored images. Build it with :meth:`from_pretrained`.

    Args: diffusers components (``vae``: ``AutoencoderKL``; ``text_encoder``: ``CLIPTextModel``;
    ``tokenizer``: ``CLIPTokenizer``; ``unet``: ``UNet2DConditionModel``; ``scheduler``: any scheduler
    whose config a ``DDIMScheduler`` accepts), the ``device`` and the ``dtype`` of the UNet/VAE/text
    encoder, and for SDXL ``text_encoder_2`` (``CLIPTextModelWithProjection``) and ``tokenizer_2``.
    Components are moved there and put in eval mode; their weights are never changed.
    """

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str = "",
        text_encoder_2=None,
        tokenizer_2=None,
    ):
        from diffusers import DDIMScheduler

        check_unet(unet)
        self.device = torch.device(device)
        self.dtype = dtype
        #: the VAE's dtype (:func:`fdi.models.vae_dtype`: fp32 for SDXL's VAE under fp16)
        self.vae_dtype = vae_dtype(vae, dtype)
        self.vae = place(vae, self.device, self.vae_dtype)
        self.text_encoder = place(text_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        #: SDXL's second text encoder (OpenCLIP-G with projection) and its tokenizer; ``None`` for SD 1.x/2.x
        self.text_encoder_2 = None if text_encoder_2 is None else place(text_encoder_2, self.device, dtype)
        self.tokenizer_2 = tokenizer_2
        self.unet = place(unet, self.device, dtype)
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.source = source
        #: the UNet compiled by :meth:`compile` (``None``: the eager one runs)
        self.compiled_unet = None
        #: ᾱ table on the device, keyed by (device, scheduler): :meth:`_alpha`
        self._alpha_cache: Optional[tuple] = None
        #: each tile's crop of the guidance of the stage being sampled: :meth:`_model_output`
        self._tile_crops = TileCrops()
        if self.prediction_type not in PREDICTION_TYPES:
            raise FDIError(
                f"model {source or ''} predicts {self.prediction_type!r}; "
                "FDI restoration supports epsilon and v_prediction models"
            )

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model: PathLike,
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[torch.dtype] = None,
        config: Optional[PathLike] = None,
        prediction_type: Optional[str] = None,
    ) -> "FDIRestorationPipeline":
        """Load a diffusers folder or a single-file SD 2.x ``.safetensors`` checkpoint (offline;
        :func:`fdi.models.load_sd`)."""
        parts = load_sd(model, dtype=dtype or torch.float32, config=config, prediction_type=prediction_type)
        return cls(
            parts.vae,
            parts.text_encoder,
            parts.tokenizer,
            parts.unet,
            parts.scheduler,
            device=device,
            dtype=dtype or torch.float32,
            source=parts.source,
            text_encoder_2=parts.text_encoder_2,
            tokenizer_2=parts.tokenizer_2,
        )

    # ---- properties and checks -------------------------------------------------------------------

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def base_family(self) -> str:
        return detect_base_family(self.unet.config, self.prediction_type)

    def check_adapter(self, adapter: FDIAdapter) -> None:
        """Raise :class:`FDIError` when ``adapter`` was made for another base family or channel layout."""
        if adapter.base_family != self.base_family:
            name, theirs, ours = adapter.display_name, family_title(adapter.base_family), family_title(self.base_family)
            raise FDIError(
                f"adapter {name} was trained for {theirs} but the model is {ours}; "
                f"use an adapter trained for {ours} or load an {theirs} model"
            )
        check_adapter_for_unet(adapter, self.unet)

    # ---- parts of the loop -----------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> Conditioning:
        """Text conditioning: ``[1, L, D]`` for SD 1.x/2.x (:func:`fdi.conditioning.encode_prompt`), for SDXL a
        :class:`~fdi.conditioning.TextConditioning` with the pooled embedding (:func:`fdi.conditioning.encode_text`)."""
        if self.text_encoder_2 is None:
            return encode_prompt(self.text_encoder, self.tokenizer, prompt, run_on=self.device)
        encoders = (self.text_encoder, self.tokenizer, self.text_encoder_2, self.tokenizer_2)
        return encode_text(encoders, prompt, run_on=self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, tiling: Optional[Tiling] = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in 0..1 (H, W multiples of 8) → scaled latents ``[B, 4, H/8, W/8]`` float32: the
        posterior *mode*. With ``tiling`` (of the latent): each tile's pixels are encoded alone, the latents blended."""

        def encode(_: int, x: torch.Tensor) -> torch.Tensor:
            return vae_encode(self.vae, x, self.vae_dtype, run_on=self.device)

        if tiling is None:
            return encode(0, images)
        return tiling.blend(images.to(self.device), encode, in_scale=LATENT_SCALE)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, tiling: Optional[Tiling] = None) -> torch.Tensor:
        """Scaled latents → images ``[B, 3, 8h, 8w]`` float32 in 0..1 (with ``tiling``: decoded per tile, blended)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0

        def decode(_: int, z: torch.Tensor) -> torch.Tensor:
            x = self.vae.decode((z / self.vae.config.scaling_factor + shift).to(self.vae_dtype)).sample.float()
            return ((x + 1) / 2).clamp(0, 1)

        if tiling is None:
            return decode(0, latents)
        return tiling.blend(latents, decode, out_scale=LATENT_SCALE)

    def schedule(self) -> Tuple[int, str, int]:
        """The model's DDIM layout: ``(num_train_timesteps, timestep_spacing, steps_offset)``."""
        c = self.scheduler.config
        spacing = getattr(c, "timestep_spacing", SD2_TIMESTEP_SPACING)
        return int(c.num_train_timesteps), spacing, int(getattr(c, "steps_offset", SD2_STEPS_OFFSET))

    def check_steps(self, steps: int) -> None:
        """Raise :class:`FDIError` for a step count the schedule cannot take (:func:`fdi.sampling.check_steps`)."""
        check_steps(steps, *self.schedule())

    def sampling_timesteps(self, steps: int) -> torch.Tensor:
        """The DDIM timesteps ``t_0 > … > t_{N−1}`` (int64, CPU) of the model's schedule
        (:func:`fdi.sampling.ddim_timesteps`)."""
        return ddim_timesteps(steps, *self.schedule())

    def inversion_timesteps(self, steps: int, inversion_steps: int) -> torch.Tensor:
        """Ascending inversion timesteps ending at the first sampling timestep
        (:func:`fdi.sampling.inversion_timesteps`)."""
        return inversion_timesteps(self.sampling_timesteps(steps), inversion_steps)

    def _alpha(self, t: Optional[int]) -> torch.Tensor:
        """ᾱ of training timestep ``t`` (``None``: the clean level, 1), float32 on the device.

        The table is kept on the device, so the loops never copy from the host per step."""
        key = (self.device, id(self.scheduler))
        if self._alpha_cache is None or self._alpha_cache[0] != key:
            self._alpha_cache = (
                key,
                self.scheduler.alphas_cumprod.to(self.device, torch.float32),
                torch.tensor(CLEAN_ALPHA, device=self.device),
            )
        return self._alpha_cache[2] if t is None else self._alpha_cache[1][int(t)]

    def compile(self, mode: Optional[str] = None, vae: Optional[bool] = None, backend: object = "inductor") -> bool:
        """Compile the UNet (and on CUDA the VAE) with ``torch.compile``: see :mod:`fdi.compile`.

        ``mode`` defaults to CUDA graphs on CUDA; ``vae`` to ``True`` on CUDA. Returns whether the UNet
        is compiled (``False``: unavailable here, a warning was given and it runs eagerly)."""
        from .compile import compile_unet, compile_vae, default_mode

        mode = default_mode(self.device) if mode is None else mode
        self.compiled_unet = compile_unet(self.unet, self.device, mode, backend)
        if (self.device.type == "cuda") if vae is None else vae:
            compile_vae(self.vae, self.device, backend)
        return self.compiled_unet.is_compiled

    def _unet(
        self, x: torch.Tensor, t: int, cond: Conditioning, size_px: Optional[Tuple[int, int]] = None
    ) -> torch.Tensor:
        """The UNet at latents ``x`` (a whole latent, or a tile of one: then ``size_px`` is the whole image's size in
        pixels, which SDXL's size conditioning takes, as ComfyUI's sampler builds it from the whole latent)."""
        tt = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        unet = self.compiled_unet or self.unet
        if size_px is None:
            size_px = (x.shape[-2] * LATENT_SCALE, x.shape[-1] * LATENT_SCALE)
        kwargs = unet_kwargs(cond, x.shape[0], size_px, self.dtype, self.device)
        return unet(x.to(self.dtype), tt, **kwargs).sample.to(torch.float32, copy=True)

    def _model_output(
        self,
        x: torch.Tensor,
        t: int,
        cond: Conditioning,
        tiling: Optional[Tiling] = None,
        hooks: Optional[DiffusersGuidance] = None,
    ) -> torch.Tensor:
        """The UNet output at ``x``: :meth:`_unet` itself, or with ``tiling`` its tiles blended (:meth:`Tiling.blend`),
        each tile guided by its crop of ``hooks``' guidance while the hooks are active."""
        if tiling is None or tiling.single:
            return self._unet(x, t, cond)
        size = (x.shape[-2] * LATENT_SCALE, x.shape[-1] * LATENT_SCALE)
        if hooks is None or not hooks.active:
            return tiling.blend(x, lambda i, xt: self._unet(xt, t, cond, size))
        whole = hooks.guidances
        crops = self._tile_crops.of(tiling, whole)  # cut once per (tiling, guidance), reused at every step

        def tile(i: int, xt: torch.Tensor) -> torch.Tensor:
            hooks.guidances = crops[i]
            return self._unet(xt, t, cond, size)

        try:
            return tiling.blend(x, tile)
        finally:
            hooks.guidances = whole

    @torch.no_grad()
    def invert(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        steps: int,
        inversion_steps: int,
        progress: Optional[ProgressCallback] = None,
        done: int = 0,
        total: int = 0,
        tiling: Optional[Tiling] = None,
    ) -> torch.Tensor:
        """DDIM inversion of clean latents ``[B, 4, h, w]`` (ᾱ = 1) to the level of the first sampling timestep.

        Each step evaluates the UNet at the *next* timestep on the current latent (diffusers'
        ``DDIMInverseScheduler``) and reads ε̂ off its output at that timestep's level
        (:func:`fdi.sampling.ddim_step`, ``alpha_eval``); with ``tiling``, per tile, blended (:meth:`_model_output`)."""
        x = latents.float()
        t_cur = None
        for j, t in enumerate(self.inversion_timesteps(steps, inversion_steps).tolist()):
            out = self._model_output(x, t, cond, tiling)
            a_t = self._alpha(t)
            x = ddim_step(x, out, self._alpha(t_cur), a_t, self.prediction_type, alpha_eval=a_t)
            t_cur = t
            report(progress, done + j + 1, total)
        return x

    @torch.no_grad()
    def sample(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        steps: int,
        windows: Sequence[Window] = (),
        hooks: Optional[DiffusersGuidance] = None,
        uncond: Optional[Conditioning] = None,
        cfg: float = 1.0,
        progress: Optional[ProgressCallback] = None,
        done: int = 0,
        total: int = 0,
        tiling: Optional[Tiling] = None,
    ) -> torch.Tensor:
        """DDIM sampling (η = 0) from the level of ``t_0`` down to the clean level (ᾱ = 1).

        ``windows``: one ``(start, end)`` per guidance of ``hooks``; at step ``k`` the hooks apply the guidances
        whose window holds it (:func:`fdi.sampling.guided_step_range`; :attr:`DiffusersGuidance.selected`), and
        none when no window does. ``tiling``: :meth:`_model_output`."""
        x = latents.float()
        b = x.shape[0]
        use_cfg = cfg != 1.0
        c = concat(uncond, cond, b) if use_cfg else cond
        ts = self.sampling_timesteps(steps).tolist()
        if hooks is not None and len(windows) != len(hooks.guidances):
            raise FDIError(f"{len(windows)} guidance windows for {len(hooks.guidances)} guidances; give one each")
        selections = step_selections(steps, windows) if hooks is not None else []
        for k, t in enumerate(ts):
            if hooks is not None:
                hooks.selected = selections[k]
                hooks.active = bool(selections[k])
            if use_cfg:
                out_u, out_c = self._model_output(torch.cat([x, x]), t, c, tiling, hooks).chunk(2)
                out = out_u + cfg * (out_c - out_u)
            else:
                out = self._model_output(x, t, c, tiling, hooks)
            x = ddim_step(
                x, out, self._alpha(t), self._alpha(ts[k + 1] if k + 1 < len(ts) else None), self.prediction_type
            )
            report(progress, done + k + 1, total)
        if hooks is not None:
            hooks.active = False
        return x

    # ---- restoration -----------------------------------------------------------------------------

    @torch.no_grad()
    def compute_guidance(self, use: AdapterUse, images: torch.Tensor) -> FDIGuidance:
        """Run one adapter once on padded images ``[B, 3, H, W]`` (0..1): float32 guidance on the device.

        The adapter module itself is moved to the pipeline's device in float32 (in place, as
        ``nn.Module.to`` does) and put in eval mode."""
        adapter = use.adapter.to(device=self.device, dtype=torch.float32).eval()
        return adapter(images.to(self.device, torch.float32), use.resolved_fdi()).detach()

    def restore(
        self,
        images: torch.Tensor,
        adapters: Sequence[AdapterUse],
        *,
        steps: int = 50,
        inversion_steps: int = 50,
        guidance_start: Optional[float] = None,
        guidance_end: Optional[float] = None,
        strength: float = 1.0,
        mode: str = "composite",
        prompt: str = "",
        negative_prompt: str = "",
        cfg: float = 1.0,
        progress: Optional[ProgressCallback] = None,
        tile_size: int = 0,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> torch.Tensor:
        """Restore ``images`` ``[B, 3, H, W]`` (0..1, any H, W ≥ 8) → ``[B, 3, H, W]`` float32 in 0..1 on the CPU.

        Each adapter guides the sampling steps ``k`` with ``start·N ≤ k < end·N`` of its window: the one its file
        records (the paper's first third, ``(0, 0.333)``, for files that record none), with ``guidance_start`` /
        ``guidance_end``, when given, replacing that end of every adapter's window
        (:func:`fdi.restoration.guidance_windows`; a :class:`GuidanceWindowNote` warning names an adapter made to
        guide outside the window it was trained for). ``composite``: at each step the weighted sum of the adapters
        whose window holds it; ``progressive``: each stage in its adapter's window.
        ``progress(done, total)`` counts UNet steps (inversion and sampling, all stages).
        ``tile_size`` (image pixels, a multiple of 64 from 128; 0 = off) and ``tile_overlap`` (pixels): VAE
        encode/decode and every UNet evaluation run on overlapping tiles, blended (:mod:`fdi.tiles`); a tile at
        least as large as the padded image gives the untiled result.
        Deterministic: the same inputs give the same output, bit for bit, on the same device.
        """
        adapters = list(adapters)
        windows, notes = check_restore_inputs(
            self, images, adapters, steps, inversion_steps, guidance_start, guidance_end, strength, mode, cfg
        )
        for note in notes:
            warnings.warn(note, GuidanceWindowNote, stacklevel=2)
        check_tiling(tile_size, tile_overlap)
        images = check_image_batch(images, "images")
        h, w = images.shape[-2:]
        cond = self.encode_prompt(prompt)
        uncond = self.encode_prompt(negative_prompt) if cfg != 1.0 else None
        stages = [(adapters, windows)] if mode == "composite" else [([a], [win]) for a, win in zip(adapters, windows)]
        per_stage = inversion_steps + steps
        total = per_stage * len(stages)
        x = images
        for i, (stage, stage_windows) in enumerate(stages):
            padded = pad_to_multiple(x.to(self.device, torch.float32))
            tiling = optional_tiling(
                padded.shape[-2] // LATENT_SCALE, padded.shape[-1] // LATENT_SCALE, tile_size, tile_overlap
            )
            guidance = [(self.compute_guidance(u, padded), u.weight) for u in stage]
            latents = self.encode_images(padded, tiling)
            del padded
            latents = self.invert(latents, cond, steps, inversion_steps, progress, i * per_stage, total, tiling)
            with DiffusersGuidance(self.unet, guidance, strength=strength, active=False) as hooks:
                latents = self.sample(
                    latents,
                    cond,
                    steps,
                    stage_windows,
                    hooks,
                    uncond,
                    cfg,
                    progress,
                    i * per_stage + inversion_steps,
                    total,
                    tiling,
                )
            del guidance
            self._tile_crops.clear()  # drop this stage's tile crops with its guidance
            x = self.decode_latents(latents, tiling)[..., :h, :w].cpu()
        return x
