"""Loading the frozen SD parts (UNet, VAE, text encoder(s), tokenizer(s), scheduler), offline, safetensors only.

One loader for every door (restoration, training, evaluation) and every base family of
:mod:`fdi.families` (SD 1.5, SD 2.x, SDXL): a diffusers folder, or a single-file checkpoint (original
SD / ComfyUI key layout) described by the configs shipped in ``fdi/configs/`` (or by a diffusers folder
given as ``config``). Nothing is ever downloaded. docs/design.md ("Model loading") records the decisions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .checkpoints import inspect_single_file, schedule_markers
from .errors import FDIError
from .families import family_for, family_title, get_family
from .files import PathLike, read_header, refuse_pickle
from .sampling import PREDICTION_TYPES
from .tokenizers import family_tokenizers

CONFIG_DIR = Path(__file__).with_name("configs")
#: the SD 2.1 families by prediction type (:func:`family_of`)
SD2_FAMILIES = {"sd2.1-base": "epsilon", "sd2.1-v": "v_prediction"}


@dataclass
class SDParts:
    """The frozen parts of a Stable Diffusion model (diffusers/transformers modules) and where they came from.

    ``text_encoder_2``/``tokenizer_2``: SDXL's OpenCLIP-G (``CLIPTextModelWithProjection``) and its tokenizer,
    ``None`` for SD 1.x/2.x. ``family``: the :mod:`fdi.families` name of the UNet and prediction type
    (:func:`fdi.restoration.detect_base_family`; ``custom-base``/``custom-v`` for a UNet of no known family),
    worked out from the parts when not given."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any
    source: str = ""
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    family: str = ""

    def __post_init__(self) -> None:
        if not self.family:
            self.family = parts_family(self.unet, self.scheduler)


def parts_family(unet, scheduler) -> str:
    """The family name of a diffusers UNet and scheduler (:func:`fdi.restoration.detect_base_family`)."""
    from .restoration import detect_base_family

    return detect_base_family(unet.config, scheduler.config.prediction_type)


def family_of(prediction_type: str) -> str:
    """The SD 2.1 family of a prediction type (:data:`SD2_FAMILIES`): ``sd2.1-base`` or ``sd2.1-v``."""
    for family, prediction in SD2_FAMILIES.items():
        if prediction == prediction_type:
            return family
    raise FDIError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def family_config_dir(family: str) -> Path:
    """The shipped diffusers config folder of a family (``sd1.5``, ``sd2.1-base``, ``sd2.1-v``, ``sdxl``; a
    ``-v`` variant of SD 1.5/SDXL gets its architecture's folder, whose scheduler the caller overrides).
    A prediction type (``epsilon``/``v_prediction``) still means the SD 2.1 family of it, as it used to."""
    if family in PREDICTION_TYPES:
        family = family_of(family)
    f = get_family(family)
    if f is None:
        raise FDIError(f"no configs are shipped for the base family {family!r}; give a diffusers folder (--sd-config)")
    name = f.configs or get_family(family_for(f.arch, "epsilon")).configs
    return CONFIG_DIR / name


def is_sdxl_folder(folder: PathLike) -> bool:
    """Whether a diffusers folder holds an SDXL pipeline: its ``model_index.json`` names an SDXL pipeline
    class, or it has a ``text_encoder_2`` folder."""
    folder = Path(folder)
    try:
        name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        name = ""
    return "XL" in str(name) or (folder / "text_encoder_2").is_dir()


# ---- loading --------------------------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _load_error(what: str, path: Path, exc: Exception) -> FDIError:
    return FDIError(
        f"could not load the {what} of {str(path)!r} ({type(exc).__name__}: {_first_line(exc)}); "
        "give a complete diffusers SD 1.5, SD 2.x or SDXL folder with safetensors weights (nothing is downloaded)"
    )


def check_prediction_type(prediction_type: Optional[str]) -> None:
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise FDIError(f"--prediction-type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def check_sd_source(model: PathLike, config: Optional[PathLike] = None, prediction_type: Optional[str] = None) -> None:
    """Every check :func:`load_sd` makes before it reads weights, in milliseconds (folder layout, or a single
    file's format, header, family and prediction type): a training run calls it before its long work."""
    check_prediction_type(prediction_type)
    p = Path(model)
    if not p.exists():
        raise FDIError(
            f"model {str(p)!r} does not exist; give a diffusers SD 1.5, SD 2.x or SDXL folder "
            "(with model_index.json) or a single-file .safetensors checkpoint"
        )
    if p.is_dir():
        _check_folder(p)
        return
    refuse_pickle(p, "model checkpoint")
    if p.suffix.lower() != ".safetensors":
        raise FDIError(
            f"model {p.name!r} is neither a diffusers folder nor a .safetensors checkpoint; give one of those"
        )
    if config is not None:
        if not Path(config).is_dir():
            raise FDIError(
                f"model config folder {str(config)!r} does not exist; "
                "give a diffusers folder of the same family (its configs are enough), "
                "or leave it out to use the shipped SD 1.5 / SD 2.1 / SDXL configs"
            )
        read_header(p, "model checkpoint")
        return
    if inspect_single_file(p)["v_prediction"] is None and prediction_type is None:
        raise _unknown_prediction(p)


def _unknown_prediction(p: Path) -> FDIError:
    return FDIError(
        f"cannot tell from {p.name!r} whether it predicts epsilon or v; "
        "pass --prediction-type epsilon (SD 2.1 base, 512 px) or v_prediction (SD 2.1, 768 px)"
    )


def _check_folder(p: Path) -> bool:
    """Refuse a folder that is no complete diffusers SD 1.5 / 2.x / SDXL base; returns whether it is SDXL."""
    xl = is_sdxl_folder(p)
    if xl and not (p / "text_encoder").is_dir() and (p / "text_encoder_2").is_dir():
        raise FDIError(
            f"{str(p)!r} is an SDXL refiner folder (OpenCLIP-G only); FDI adapters need the SDXL base "
            "(stable-diffusion-xl-base-1.0) or a fine-tune of it"
        )
    needed = ("unet", "vae", "text_encoder", "tokenizer", "scheduler") + (
        ("text_encoder_2", "tokenizer_2") if xl else ()
    )
    missing = [d for d in needed if not (p / d).is_dir()]
    if missing:
        kind = "SDXL" if xl else "Stable Diffusion"
        raise FDIError(
            f"{str(p)!r} is not a diffusers {kind} folder "
            f"(missing {', '.join(missing)}); give the folder that holds model_index.json, unet/, vae/, …"
        )
    return xl


def load_sd(
    model: PathLike,
    dtype: torch.dtype = torch.float32,
    config: Optional[PathLike] = None,
    prediction_type: Optional[str] = None,
) -> SDParts:
    """Load a diffusers folder or a single-file ``.safetensors`` checkpoint of SD 1.5, SD 2.x or SDXL on the
    CPU, offline.

    ``config``: for a single file, a diffusers folder whose configs describe it (default: the shipped
    configs of the family its header shows, :func:`inspect_single_file`); a single file's ``v_pred`` / ``ztsnr``
    keys set its prediction type and schedule (:func:`single_file_scheduler`). ``prediction_type``
    (``epsilon``/``v_prediction``) overrides the scheduler's, or for a single file what its weights or keys declare
    (zero terminal SNR applies only under v-prediction). An fp16/bf16 file loaded for a wider ``dtype`` is built in
    its own precision and upcast (:func:`half_storage_dtype`). The result's ``family`` follows from the UNet and the
    final prediction type."""
    check_sd_source(model, config, prediction_type)
    p = Path(model)
    parts = _from_folder(p, dtype) if p.is_dir() else _from_single_file(p, dtype, config, prediction_type)
    if prediction_type is not None and parts.scheduler.config.prediction_type != prediction_type:
        from diffusers import DDIMScheduler

        parts.scheduler = DDIMScheduler.from_config(parts.scheduler.config, prediction_type=prediction_type)
    parts.family = parts_family(parts.unet, parts.scheduler)
    return parts


def _from_folder(p: Path, dtype: torch.dtype) -> SDParts:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    xl = _check_folder(p)
    st = dict(local_files_only=True, use_safetensors=True)
    loaders = [
        ("unet", lambda: UNet2DConditionModel.from_pretrained(p, subfolder="unet", torch_dtype=dtype, **st)),
        ("vae", lambda: AutoencoderKL.from_pretrained(p, subfolder="vae", torch_dtype=dtype, **st)),
        ("text_encoder", lambda: CLIPTextModel.from_pretrained(p / "text_encoder", dtype=dtype, **st)),
        ("tokenizer", lambda: CLIPTokenizer.from_pretrained(p / "tokenizer", local_files_only=True)),
        ("scheduler", lambda: DDIMScheduler.from_pretrained(p, subfolder="scheduler", local_files_only=True)),
    ]
    if xl:
        loaders += [
            (
                "text_encoder_2",
                lambda: CLIPTextModelWithProjection.from_pretrained(p / "text_encoder_2", dtype=dtype, **st),
            ),
            ("tokenizer_2", lambda: CLIPTokenizer.from_pretrained(p / "tokenizer_2", local_files_only=True)),
        ]
    parts = {}
    for name, load in loaders:
        try:
            parts[name] = load()
        except FDIError:
            raise
        except (OSError, ValueError, EnvironmentError, KeyError, json.JSONDecodeError) as exc:
            raise _load_error(name, p, exc) from None
    return SDParts(source=p.name, **parts)


@dataclass
class _SingleFilePlan:
    """How :func:`_from_single_file` loads a file: the ``from_single_file`` pipeline class and keyword arguments
    (the scheduler among them: :func:`declared_scheduler` of the config's), and the hint a failure message ends
    with."""

    pipeline_class: Any
    kwargs: Dict[str, Any]
    hint: str


def _single_file_plan(p: Path, config: Optional[PathLike], prediction_type: Optional[str]) -> _SingleFilePlan:
    from .transformers_compat import use_pil_image_processors

    use_pil_image_processors()  # diffusers' pipeline modules import CLIP/SigLIP processors the pack never runs
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    kwargs: Dict[str, Any] = {}
    if config is None:
        facts = inspect_single_file(p)
        arch = facts["arch"]
        if prediction_type is None:
            if facts["v_prediction"] is None:
                raise _unknown_prediction(p)
            prediction_type = "v_prediction" if facts["v_prediction"] else "epsilon"
        zero_snr = facts["zero_snr"]
        family = family_for(arch, prediction_type)
        kwargs["config"] = str(family_config_dir(family))
        tokenizers = family_tokenizers(arch)
        kwargs["tokenizer"] = tokenizers[0]
        if arch == "sdxl":
            kwargs["tokenizer_2"] = tokenizers[1]
        what = family_title(family)
        hint = f"check that it is an {what} checkpoint, or pass --sd-config with a diffusers folder describing it"
    else:
        infos, _ = read_header(p, "model checkpoint")
        markers = schedule_markers(infos)  # the file's own markers beat the folder's scheduler
        if prediction_type is None and markers["v_prediction"]:
            prediction_type = "v_prediction"
        zero_snr = markers["zero_snr"]
        arch = "sdxl" if is_sdxl_folder(config) else "sd"
        kwargs["config"] = str(config)
        what = "SDXL" if arch == "sdxl" else "SD 1.x/2.x"
        hint = f"check that --sd-config describes this checkpoint (an {what} diffusers folder)"
    if arch == "sdxl":
        pipeline_class, kwargs["add_watermarker"] = StableDiffusionXLPipeline, False
    else:
        pipeline_class = StableDiffusionPipeline
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        base = DDIMScheduler.from_pretrained(kwargs["config"], subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FDIError(
            f"could not read the scheduler config for {p.name!r} ({type(exc).__name__}: {_first_line(exc)[:200]}); "
            f"{hint}"
        ) from None
    kwargs["scheduler"] = declared_scheduler(base, prediction_type, zero_snr)
    return _SingleFilePlan(pipeline_class, kwargs, hint)


def single_file_scheduler(
    path: PathLike, config: Optional[PathLike] = None, prediction_type: Optional[str] = None
) -> Any:
    """The ``DDIMScheduler`` :func:`load_sd` gives a single file (same arguments), from its header and the configs
    alone: the family's shipped scheduler (or ``config``'s), with the prediction type and schedule the file's
    markers declare (:func:`fdi.checkpoints.schedule_markers`, :func:`declared_scheduler`)."""
    check_prediction_type(prediction_type)
    return _single_file_plan(Path(path), config, prediction_type).kwargs["scheduler"]


def _from_single_file(
    p: Path, dtype: torch.dtype, config: Optional[PathLike], prediction_type: Optional[str]
) -> SDParts:
    plan = _single_file_plan(p, config, prediction_type)
    build = half_storage_dtype(read_header(p, "model checkpoint")[0], dtype)
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: from_single_file must never reach the hub
    try:
        pipe = plan.pipeline_class.from_single_file(str(p), local_files_only=True, torch_dtype=build, **plan.kwargs)
    except FDIError:
        raise
    except Exception as exc:  # diffusers raises many types here (config lookups, key errors)
        raise FDIError(
            f"could not load the single-file checkpoint {p.name!r} offline ({type(exc).__name__}: "
            f"{_first_line(exc)[:200]}); {plan.hint}"
        ) from None
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    modules = [pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    if build != dtype:  # the file's tensors are freed by now: each module is upcast in place, one at a time
        for module in modules:
            if module is not None:  # torch's own ``to``: diffusers' warns on every dtype cast
                torch.nn.Module.to(module, dtype=dtype)
    return SDParts(
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        pipe.unet,
        pipe.scheduler,
        source=p.name,
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
    )


#: safetensors dtype names of the half-precision storage types
_HALF_STORAGE = {"F16": torch.float16, "BF16": torch.bfloat16}
_FLOAT_STORAGE = {"F16", "BF16", "F32", "F64"}


def half_storage_dtype(infos: Dict[str, Any], dtype: torch.dtype) -> torch.dtype:
    """The dtype to build a single file's modules in before they run in ``dtype``: the file's half precision when
    every non-empty floating tensor of the header ``infos`` is stored in it and ``dtype`` is wider, else ``dtype``.

    Building in the storage dtype and upcasting afterwards is exact, and the load then peaks at the file plus
    half-precision modules, then the ``dtype`` modules alone, instead of the file plus the ``dtype`` modules
    (an fp16 SDXL file loaded for fp32: docs/design.md, "Model loading")."""
    stored = {
        info["dtype"]
        for info in infos.values()
        if info["dtype"] in _FLOAT_STORAGE and all(int(n) > 0 for n in info["shape"])
    }
    if len(stored) == 1 and next(iter(stored)) in _HALF_STORAGE and torch.finfo(dtype).bits > 16:
        return _HALF_STORAGE[stored.pop()]
    return dtype


#: ᾱ of the last training timestep of a zero-terminal-SNR schedule. The rescaled schedule ends at ᾱ = 0 (σ = ∞);
#: ComfyUI (comfy/model_sampling.py, ``rescale_zero_terminal_snr_sigmas``) pins it to this value (σ ≈ 4519) to keep
#: its sigma table finite, and the CLI takes the same value so that both doors run one schedule
ZERO_SNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def zero_snr_betas(config) -> list:
    """The ``num_train_timesteps`` betas of a scheduler config's schedule (``scaled_linear``, ``linear`` or
    ``trained_betas``) rescaled to zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", 2024, Algorithm 1): √ᾱ shifted to end at 0 and scaled to keep its first value, the last ᾱ then
    :data:`ZERO_SNR_LAST_ALPHA_BAR`. Computed in float64: its ᾱ in float32 equals ComfyUI's to ~1e-7."""
    n = int(config.num_train_timesteps)
    trained = getattr(config, "trained_betas", None)
    schedule = getattr(config, "beta_schedule", "")
    start, end = float(config.beta_start), float(config.beta_end)
    if trained is not None:
        betas = torch.tensor(list(trained), dtype=torch.float64)
    elif schedule == "scaled_linear":  # ComfyUI's "linear": linear in √β
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise FDIError(
            f"cannot rescale a {schedule!r} beta schedule to zero terminal SNR; "
            "give a diffusers folder (--sd-config) whose scheduler uses scaled_linear or linear betas"
        )
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = float(root[0]), float(root[-1])
    alpha_bar = ((root - last) * (first / (first - last))) ** 2
    alpha_bar[-1] = ZERO_SNR_LAST_ALPHA_BAR
    before = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return (1 - alpha_bar / before).tolist()


def declared_scheduler(scheduler, prediction_type: Optional[str], zero_snr: bool):
    """``scheduler``, or a ``DDIMScheduler`` of its config set to ``prediction_type`` (``None``: unchanged) and, with
    ``zero_snr`` under v-prediction, to the zero-terminal-SNR schedule (:func:`zero_snr_betas`, as ``trained_betas``
    so that it survives ``from_config``). The one rule of what a single file's markers do (docs/design.md)."""
    from diffusers import DDIMScheduler

    config = scheduler.config
    prediction = prediction_type or config.prediction_type
    if zero_snr and prediction == "v_prediction":
        betas = zero_snr_betas(config)
        return DDIMScheduler.from_config(
            config, prediction_type=prediction, trained_betas=betas, rescale_betas_zero_snr=False
        )
    if prediction != config.prediction_type:
        return DDIMScheduler.from_config(config, prediction_type=prediction)
    return scheduler


def vae_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    """The dtype a VAE computes in when the model runs in ``dtype``: ``dtype``, except float32 for a VAE whose
    config sets ``force_upcast`` when ``dtype`` is float16 (SDXL's VAE overflows in fp16, as diffusers' own SDXL
    pipeline knows)."""
    return torch.float32 if dtype == torch.float16 and getattr(vae.config, "force_upcast", False) else dtype


def place(module, device: Union[str, torch.device], dtype: torch.dtype):
    """``module`` on ``device`` in ``dtype``, eval mode, no gradients (``to`` only where it differs)."""
    device = torch.device(device)
    p = next(module.parameters())
    if p.dtype != dtype:
        module = module.to(dtype=dtype)
    if p.device != device:
        module = module.to(device)
    module.requires_grad_(False)
    return module.eval()


# ---- text conditioning ----------------------------------------------------------------------------


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor, dtype: torch.dtype, run_on: Optional[torch.device] = None) -> torch.Tensor:
    """Images ``[b, 3, H, W]`` in 0..1 (H, W multiples of 8) → scaled latents ``[b, 4, H/8, W/8]`` float32:
    the posterior *mode* of a diffusers ``AutoencoderKL`` computing in ``dtype`` on ``run_on`` (default: the
    VAE's device; an offloaded VAE's is "meta"), shifted and scaled by its config."""
    where = run_on if run_on is not None else vae.device
    z = vae.encode((images * 2 - 1).to(device=where, dtype=dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor
