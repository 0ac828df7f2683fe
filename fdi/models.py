"""Loading the frozen SD 2.x parts (UNet, VAE, text encoder, tokenizer, scheduler), offline, safetensors only.

One loader for every door (restoration, training, evaluation): a diffusers folder, or a single-file
checkpoint (original SD / ComfyUI key layout) described by the configs shipped in ``fdi/configs/``
(or by a diffusers folder given as ``config``). Nothing is ever downloaded. docs/design.md
("Training", model loading) records the decisions.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .errors import FDIError
from .files import PathLike, read_header, refuse_pickle
from .sampling import PREDICTION_TYPES

CONFIG_DIR = Path(__file__).with_name("configs")
#: shipped config folders, by family
FAMILIES = {"sd2.1-base": "epsilon", "sd2.1-v": "v_prediction"}
#: CLIP BPE merges (OpenAI CLIP tokenizer data, MIT); SD 2.x's OpenCLIP-H uses the same vocabulary
MERGES_FILE = CONFIG_DIR / "clip_bpe_merges.txt.gz"
#: SD 2.x pads prompts with token 0 ("!"), not with the end token as SD 1.x does
SD2_PAD_TOKEN = "!"
CONTEXT_LENGTH = 77

# single-file keys that tell the families apart (original SD / ComfyUI layout)
_UNET = "model.diffusion_model."
_CROSS_K = _UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_CONV_IN = _UNET + "input_blocks.0.0.weight"
_SDXL_HINT = "conditioner.embedders.1."
_SDXL_LABEL = _UNET + "label_emb.0.0.weight"
#: ComfyUI's v-prediction test (comfy/supported_models.py, SD20.model_type): the population std of this
#: LayerNorm bias is > 0.09 in the v-prediction SD 2.x releases and smaller in the epsilon ones
V_PRED_PROBE = _UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD = 0.09


@dataclass
class SDParts:
    """The frozen parts of an SD 2.x model (diffusers/transformers modules) and where they came from."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any
    source: str = ""


# ---- tokenizer ------------------------------------------------------------------------------------


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges() -> Tuple[Dict[str, int], List[str]]:
    """The CLIP BPE vocabulary (49 408 tokens) and merge list, rebuilt from the shipped merges.

    CLIP's vocabulary is a function of its merges (OpenAI's ``SimpleTokenizer``): the 256 byte
    characters, the same with ``</w>``, one token per merge, then the start and end tokens."""
    with gzip.open(MERGES_FILE, "rt", encoding="utf-8") as fh:
        merges = [line for line in fh.read().split("\n")[1:] if line]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def sd2_tokenizer():
    """SD 2.x's tokenizer (CLIP BPE, padded with ``!``, 77 tokens) from the shipped merges."""
    import tempfile

    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    with tempfile.TemporaryDirectory(
        prefix="fdi-tokenizer-"
    ) as tmp:  # the file layout every transformers version reads
        d = Path(tmp)
        (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (d / "tokenizer_config.json").write_text(
            json.dumps({"pad_token": SD2_PAD_TOKEN, "model_max_length": CONTEXT_LENGTH})
        )
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


# ---- single-file inspection -----------------------------------------------------------------------


def inspect_single_file(path: PathLike) -> Dict[str, Any]:
    """Family facts of a single-file checkpoint from its header: ``{"arch", "v_prediction"}``.

    ``arch`` is ``sd2`` (cross-attention width 1024, 4 latent channels); anything else raises
    :class:`FDIError` naming what the file looks like. ``v_prediction`` is ``True``/``False`` when the
    weights tell (ComfyUI's probe, or a ``v_pred`` key), else ``None``."""
    p = Path(path)
    infos, _ = read_header(p, "model checkpoint")
    if _SDXL_LABEL in infos or any(k.startswith(_SDXL_HINT) for k in infos):
        raise FDIError(
            f"{p.name!r} is an SDXL checkpoint; FDI adapters need an SD 2.x model "
            "(e.g. v2-1_512-ema-pruned.safetensors)"
        )
    if _CROSS_K not in infos:
        raise FDIError(
            f"{p.name!r} is not a Stable Diffusion UNet checkpoint (no {_CROSS_K}); "
            "give an SD 2.x single-file checkpoint or a diffusers SD 2.1 folder"
        )
    width = infos[_CROSS_K]["shape"][-1]
    if width != 1024:
        kind = {768: "an SD 1.x checkpoint"}.get(width, f"a UNet with cross-attention width {width}")
        raise FDIError(f"{p.name!r} is {kind}, not SD 2.x (width 1024); FDI adapters need an SD 2.x model")
    if _CONV_IN in infos and infos[_CONV_IN]["shape"][1] != 4:
        raise FDIError(
            f"{p.name!r} takes {infos[_CONV_IN]['shape'][1]} latent channels (an inpainting/depth model); "
            "FDI adapters need a plain 4-channel SD 2.x model"
        )
    v = None
    if "v_pred" in infos:
        v = True
    elif V_PRED_PROBE in infos:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            bias = fh.get_tensor(V_PRED_PROBE).float()
        v = bool(torch.std(bias, unbiased=False) > V_PRED_STD)
    return {"arch": "sd2", "v_prediction": v}


def family_of(prediction_type: str) -> str:
    """The SD 2.1 family of a prediction type (:data:`FAMILIES`): ``sd2.1-base`` or ``sd2.1-v``."""
    for family, prediction in FAMILIES.items():
        if prediction == prediction_type:
            return family
    raise FDIError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def family_config_dir(prediction_type: str) -> Path:
    """The shipped diffusers config folder for an SD 2.1 model of this prediction type."""
    return CONFIG_DIR / family_of(prediction_type)


# ---- loading --------------------------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _load_error(what: str, path: Path, exc: Exception) -> FDIError:
    return FDIError(
        f"could not load the {what} of {str(path)!r} ({type(exc).__name__}: {_first_line(exc)}); "
        "give a complete diffusers SD 2.1 folder with safetensors weights (nothing is downloaded)"
    )


def check_prediction_type(prediction_type: Optional[str]) -> None:
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise FDIError(f"--prediction-type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def load_sd(
    model: PathLike,
    dtype: torch.dtype = torch.float32,
    config: Optional[PathLike] = None,
    prediction_type: Optional[str] = None,
) -> SDParts:
    """Load a diffusers folder or a single-file ``.safetensors`` SD 2.x checkpoint on the CPU, offline.

    ``config``: for a single file, a diffusers folder whose configs describe it (default: the
    shipped ``sd2.1-base``/``sd2.1-v`` configs). ``prediction_type`` (``epsilon``/``v_prediction``)
    overrides the scheduler's, or for a single file what its weights suggest."""
    check_prediction_type(prediction_type)
    p = Path(model)
    if not p.exists():
        raise FDIError(
            f"model {str(p)!r} does not exist; give a diffusers SD 2.1 folder "
            "(with model_index.json) or a single-file .safetensors checkpoint"
        )
    parts = _from_folder(p, dtype) if p.is_dir() else _from_single_file(p, dtype, config, prediction_type)
    if prediction_type is not None and parts.scheduler.config.prediction_type != prediction_type:
        from diffusers import DDIMScheduler

        parts.scheduler = DDIMScheduler.from_config(parts.scheduler.config, prediction_type=prediction_type)
    return parts


def _from_folder(p: Path, dtype: torch.dtype) -> SDParts:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [d for d in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (p / d).is_dir()]
    if missing:
        raise FDIError(
            f"{str(p)!r} is not a diffusers Stable Diffusion folder "
            f"(missing {', '.join(missing)}); give the folder that holds model_index.json, unet/, vae/, …"
        )
    st = dict(local_files_only=True, use_safetensors=True)
    loaders = (
        ("unet", lambda: UNet2DConditionModel.from_pretrained(p, subfolder="unet", torch_dtype=dtype, **st)),
        ("vae", lambda: AutoencoderKL.from_pretrained(p, subfolder="vae", torch_dtype=dtype, **st)),
        ("text_encoder", lambda: CLIPTextModel.from_pretrained(p / "text_encoder", dtype=dtype, **st)),
        ("tokenizer", lambda: CLIPTokenizer.from_pretrained(p / "tokenizer", local_files_only=True)),
        ("scheduler", lambda: DDIMScheduler.from_pretrained(p, subfolder="scheduler", local_files_only=True)),
    )
    parts = {}
    for name, load in loaders:
        try:
            parts[name] = load()
        except FDIError:
            raise
        except (OSError, ValueError, EnvironmentError, KeyError, json.JSONDecodeError) as exc:
            raise _load_error(name, p, exc) from None
    return SDParts(source=p.name, **parts)


def _from_single_file(
    p: Path, dtype: torch.dtype, config: Optional[PathLike], prediction_type: Optional[str]
) -> SDParts:
    from diffusers import StableDiffusionPipeline

    refuse_pickle(p, "model checkpoint")
    if p.suffix.lower() != ".safetensors":
        raise FDIError(
            f"model {p.name!r} is neither a diffusers folder nor a .safetensors checkpoint; give one of those"
        )
    if config is not None and not Path(config).is_dir():
        raise FDIError(
            f"model config folder {str(config)!r} does not exist; "
            "give a diffusers SD 2.1 folder (its configs are enough), "
            "or leave it out to use the shipped SD 2.1 configs"
        )
    kwargs: Dict[str, Any] = dict(
        local_files_only=True, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    if config is None:
        facts = inspect_single_file(p)
        if prediction_type is None:
            if facts["v_prediction"] is None:
                raise FDIError(
                    f"cannot tell from {p.name!r} whether it predicts epsilon or v; "
                    "pass --prediction-type epsilon (SD 2.1 base, 512 px) or v_prediction (SD 2.1, 768 px)"
                )
            prediction_type = "v_prediction" if facts["v_prediction"] else "epsilon"
        kwargs["config"] = str(family_config_dir(prediction_type))
        kwargs["tokenizer"] = sd2_tokenizer()
    else:
        read_header(p, "model checkpoint")
        kwargs["config"] = str(config)
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: from_single_file must never reach the hub
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(p), **kwargs)
    except FDIError:
        raise
    except Exception as exc:  # diffusers raises many types here (config lookups, key errors)
        hint = (
            "check that it is an SD 2.x checkpoint, or pass --sd-config with a diffusers folder describing it"
            if config is None
            else "check that --sd-config describes this checkpoint (SD 2.1 base or 768)"
        )
        raise FDIError(
            f"could not load the single-file checkpoint {p.name!r} offline ({type(exc).__name__}: "
            f"{_first_line(exc)[:200]}); {hint}"
        ) from None
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    return SDParts(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler, source=p.name)


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


@torch.no_grad()
def encode_prompt(
    text_encoder,
    tokenizer,
    prompt: str,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    run_on: Optional[torch.device] = None,
) -> torch.Tensor:
    """Text conditioning ``[1, L, D]`` of ``prompt``: ``last_hidden_state`` of the padded tokens, moved to
    ``device``/``dtype`` when given. The encoder runs where it is (it is not moved): on ``run_on`` when
    given (an offloaded encoder's parameters are on "meta"), else on its parameters' device.

    ``L`` is the encoder's context length (77 for SD 2.1): a tokenizer saved without a ``model_max_length``
    reports a huge sentinel, so the length comes from the encoder's config whenever the tokenizer's is larger."""
    length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    where = run_on if run_on is not None else next(text_encoder.parameters()).device
    return text_encoder(ids.to(where))[0].to(device=device, dtype=dtype)


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor, dtype: torch.dtype, run_on: Optional[torch.device] = None) -> torch.Tensor:
    """Images ``[b, 3, H, W]`` in 0..1 (H, W multiples of 8) → scaled latents ``[b, 4, H/8, W/8]`` float32:
    the posterior *mode* of a diffusers ``AutoencoderKL`` computing in ``dtype`` on ``run_on`` (default: the
    VAE's device; an offloaded VAE's is "meta"), shifted and scaled by its config."""
    where = run_on if run_on is not None else vae.device
    z = vae.encode((images * 2 - 1).to(device=where, dtype=dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor
