"""Loading the frozen SD parts (UNet, VAE, text encoder(s), tokenizer(s), scheduler), offline, safetensors only.

One loader for every door (restoration, training, evaluation) and every base family of
:mod:`fdi.families` (SD 1.5, SD 2.x, SDXL): a diffusers folder, or a single-file checkpoint (original
SD / ComfyUI key layout) described by the configs shipped in ``fdi/configs/`` (or by a diffusers folder
given as ``config``). Nothing is ever downloaded. docs/design.md ("Model loading") records the decisions.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .errors import FDIError
from .families import family_for, family_title, get_family
from .files import PathLike, read_header, refuse_pickle
from .sampling import PREDICTION_TYPES

CONFIG_DIR = Path(__file__).with_name("configs")
#: the SD 2.1 families by prediction type (:func:`family_of`)
SD2_FAMILIES = {"sd2.1-base": "epsilon", "sd2.1-v": "v_prediction"}
#: CLIP BPE merges (OpenAI CLIP tokenizer data, MIT); OpenCLIP-H/-G (SD 2.x, SDXL) use the same vocabulary
MERGES_FILE = CONFIG_DIR / "clip_bpe_merges.txt.gz"
#: OpenAI CLIP's end token: SD 1.x's tokenizer and SDXL's first pad with it
END_TOKEN = "<|endoftext|>"
#: OpenCLIP's pad, token 0 ("!"): SD 2.x's tokenizer and SDXL's second
SD2_PAD_TOKEN = "!"
#: the pad token of each tokenizer of an architecture (``tokenizer``, then ``tokenizer_2``)
PAD_TOKENS = {"sd1": (END_TOKEN,), "sd2": (SD2_PAD_TOKEN,), "sdxl": (END_TOKEN, SD2_PAD_TOKEN)}
CONTEXT_LENGTH = 77

# single-file keys that tell the families apart (original SD / ComfyUI key layout)
_UNET = "model.diffusion_model."
_CROSS_K = _UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
#: SDXL's first cross-attention (its level 0 has none)
_SDXL_CROSS_K = _UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
_CONV_IN = _UNET + "input_blocks.0.0.weight"
_SDXL_HINT = "conditioner.embedders.1."
_SDXL_CLIP_G = "conditioner.embedders.1.model."
_REFINER_CLIP_G = "conditioner.embedders.0.model."
_SDXL_LABEL = _UNET + "label_emb.0.0.weight"
#: SDXL base's pooled-text + size conditioning width (1280 + 6 × 256); the refiner's is 2560
SDXL_ADM_WIDTH = 2816
#: ComfyUI's v-prediction test (comfy/supported_models.py, SD20.model_type): the population std of this
#: LayerNorm bias is > 0.09 in the v-prediction SD 2.x releases and smaller in the epsilon ones
V_PRED_PROBE = _UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD = 0.09


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


@dataclass
class TextConditioning:
    """What the UNet is conditioned on for a prompt: ``embeds`` ``[1, L, D]`` (the cross-attention context;
    L = 77 for the released models, D = 768 / 1024 / 2048 for SD 1.x / 2.x / SDXL) and, for SDXL, ``pooled``
    ``[1, 1280]`` (OpenCLIP-G's projected text embedding; ``None`` for SD 1.x/2.x)."""

    embeds: torch.Tensor
    pooled: Optional[torch.Tensor] = None


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
    tokens += ["<|startoftext|>", END_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = END_TOKEN):
    """A CLIP BPE tokenizer (77 tokens) from the shipped merges, padding with ``pad_token``: the end token
    for SD 1.x and SDXL's first tokenizer, ``!`` for SD 2.x and SDXL's second (:data:`PAD_TOKENS`)."""
    import tempfile

    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    if pad_token not in vocab:
        raise FDIError(f"pad token {pad_token!r} is not in the CLIP vocabulary; use {END_TOKEN!r} or '!'")
    with tempfile.TemporaryDirectory(prefix="fdi-tokenizer-") as tmp:  # the file layout every transformers reads
        d = Path(tmp)
        (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (d / "tokenizer_config.json").write_text(
            json.dumps({"pad_token": pad_token, "model_max_length": CONTEXT_LENGTH})
        )
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def sd2_tokenizer():
    """SD 2.x's tokenizer (CLIP BPE, padded with ``!``, 77 tokens) from the shipped merges."""
    return clip_tokenizer(SD2_PAD_TOKEN)


def family_tokenizers(arch: str) -> tuple:
    """The tokenizers of an architecture (``sd1``/``sd2``: one; ``sdxl``: two), from the shipped merges."""
    return tuple(clip_tokenizer(pad) for pad in PAD_TOKENS[arch])


# ---- single-file inspection -----------------------------------------------------------------------

_NEED = "FDI adapters need an SD 1.5, SD 2.x or SDXL base model"


def _shape(infos: Dict[str, Any], key: str) -> Optional[List[int]]:
    return list(infos[key]["shape"]) if key in infos else None


def inspect_single_file(path: PathLike) -> Dict[str, Any]:
    """Family facts of a single-file checkpoint from its header: ``{"arch", "v_prediction"}``.

    ``arch`` is ``sd1`` (cross-attention width 768), ``sd2`` (1024) or ``sdxl`` (two text encoders,
    ``label_emb`` of width 2816, cross-attention 2048), always with 4 latent channels; anything else
    (the SDXL refiner, inpainting/depth models, other widths, not a UNet) raises :class:`FDIError` naming
    what the file looks like. ``v_prediction``: ``True`` for a ``v_pred`` key (ComfyUI's convention); for
    SD 2.x ComfyUI's weight probe, ``None`` when it is absent; else ``False`` (SD 1.x and SDXL releases
    predict epsilon)."""
    p = Path(path)
    infos, _ = read_header(p, "model checkpoint")
    conv_in = _shape(infos, _CONV_IN)
    if conv_in is not None and conv_in[1] != 4:
        raise FDIError(
            f"{p.name!r} takes {conv_in[1]} latent channels (an inpainting/depth model); "
            "FDI adapters need a plain 4-channel SD 1.5, SD 2.x or SDXL model"
        )
    if "edm_mean" in infos or "edm_vpred.sigma_max" in infos:
        raise FDIError(
            f"{p.name!r} is an EDM-schedule SDXL model (Playground v2.5 or an EDM v-prediction fine-tune); "
            "FDI samples with the DDIM schedule of SDXL base 1.0 and its fine-tunes: give one of those"
        )
    label = _shape(infos, _SDXL_LABEL)
    clip_g = any(k.startswith(_SDXL_CLIP_G) for k in infos)
    refiner_clip = any(k.startswith(_REFINER_CLIP_G) for k in infos)
    if clip_g or (label is not None and _CROSS_K not in infos):  # SDXL layout (its level 0 has no attention)
        if (
            (conv_in is not None and conv_in[0] != 320)
            or (label is not None and label[1] != SDXL_ADM_WIDTH)
            or (refiner_clip and not clip_g)
        ):
            raise FDIError(
                f"{p.name!r} is the SDXL refiner (OpenCLIP-G only, UNet width 384) or a model like it; "
                "FDI adapters need the SDXL base (e.g. sd_xl_base_1.0.safetensors) or a fine-tune of it"
            )
        cross = _shape(infos, _SDXL_CROSS_K)
        if cross is not None and cross[-1] != 2048:
            raise FDIError(
                f"{p.name!r} looks like SDXL but its cross-attention width is {cross[-1]}, not 2048; {_NEED}"
            )
        return {"arch": "sdxl", "v_prediction": "v_pred" in infos}
    if _CROSS_K not in infos:
        raise FDIError(
            f"{p.name!r} is not a Stable Diffusion UNet checkpoint (no {_CROSS_K}); "
            "give an SD 1.5, SD 2.x or SDXL single-file checkpoint or a diffusers folder of one"
        )
    if label is not None:
        raise FDIError(
            f"{p.name!r} has a class/image-conditioned UNet (label_emb: an unCLIP or upscaler model); {_NEED}"
        )
    width = infos[_CROSS_K]["shape"][-1]
    if width == 768:
        return {"arch": "sd1", "v_prediction": "v_pred" in infos}
    if width != 1024:
        raise FDIError(
            f"{p.name!r} is a UNet with cross-attention width {width}, not SD 1.x (768) or SD 2.x (1024); {_NEED}"
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


def load_sd(
    model: PathLike,
    dtype: torch.dtype = torch.float32,
    config: Optional[PathLike] = None,
    prediction_type: Optional[str] = None,
) -> SDParts:
    """Load a diffusers folder or a single-file ``.safetensors`` checkpoint of SD 1.5, SD 2.x or SDXL on the
    CPU, offline.

    ``config``: for a single file, a diffusers folder whose configs describe it (default: the shipped
    configs of the family its header shows, :func:`inspect_single_file`). ``prediction_type``
    (``epsilon``/``v_prediction``) overrides the scheduler's, or for a single file what its weights suggest.
    The result's ``family`` follows from the UNet and the final prediction type."""
    check_prediction_type(prediction_type)
    p = Path(model)
    if not p.exists():
        raise FDIError(
            f"model {str(p)!r} does not exist; give a diffusers SD 1.5, SD 2.x or SDXL folder "
            "(with model_index.json) or a single-file .safetensors checkpoint"
        )
    parts = _from_folder(p, dtype) if p.is_dir() else _from_single_file(p, dtype, config, prediction_type)
    if prediction_type is not None and parts.scheduler.config.prediction_type != prediction_type:
        from diffusers import DDIMScheduler

        parts.scheduler = DDIMScheduler.from_config(parts.scheduler.config, prediction_type=prediction_type)
    parts.family = parts_family(parts.unet, parts.scheduler)
    return parts


def _from_folder(p: Path, dtype: torch.dtype) -> SDParts:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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


def _from_single_file(
    p: Path, dtype: torch.dtype, config: Optional[PathLike], prediction_type: Optional[str]
) -> SDParts:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    refuse_pickle(p, "model checkpoint")
    if p.suffix.lower() != ".safetensors":
        raise FDIError(
            f"model {p.name!r} is neither a diffusers folder nor a .safetensors checkpoint; give one of those"
        )
    if config is not None and not Path(config).is_dir():
        raise FDIError(
            f"model config folder {str(config)!r} does not exist; "
            "give a diffusers folder of the same family (its configs are enough), "
            "or leave it out to use the shipped SD 1.5 / SD 2.1 / SDXL configs"
        )
    kwargs: Dict[str, Any] = dict(local_files_only=True, torch_dtype=dtype)
    if config is None:
        facts = inspect_single_file(p)
        arch = facts["arch"]
        if prediction_type is None:
            if facts["v_prediction"] is None:
                raise FDIError(
                    f"cannot tell from {p.name!r} whether it predicts epsilon or v; "
                    "pass --prediction-type epsilon (SD 2.1 base, 512 px) or v_prediction (SD 2.1, 768 px)"
                )
            prediction_type = "v_prediction" if facts["v_prediction"] else "epsilon"
        family = family_for(arch, prediction_type)
        kwargs["config"] = str(family_config_dir(family))
        tokenizers = family_tokenizers(arch)
        kwargs["tokenizer"] = tokenizers[0]
        if arch == "sdxl":
            kwargs["tokenizer_2"] = tokenizers[1]
        what = family_title(family)
        hint = f"check that it is an {what} checkpoint, or pass --sd-config with a diffusers folder describing it"
    else:
        read_header(p, "model checkpoint")
        arch = "sdxl" if is_sdxl_folder(config) else "sd"
        kwargs["config"] = str(config)
        what = "SDXL" if arch == "sdxl" else "SD 1.x/2.x"
        hint = f"check that --sd-config describes this checkpoint (an {what} diffusers folder)"
    if arch == "sdxl":
        pipeline_class, kwargs["add_watermarker"] = StableDiffusionXLPipeline, False
    else:
        pipeline_class = StableDiffusionPipeline
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: from_single_file must never reach the hub
    try:
        pipe = pipeline_class.from_single_file(str(p), **kwargs)
    except FDIError:
        raise
    except Exception as exc:  # diffusers raises many types here (config lookups, key errors)
        raise FDIError(
            f"could not load the single-file checkpoint {p.name!r} offline ({type(exc).__name__}: "
            f"{_first_line(exc)[:200]}); {hint}"
        ) from None
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
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


def _tokens(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    """Padded token ids ``[1, L]``; ``L`` = the tokenizer's length, or the encoder's where that is shorter (a
    tokenizer saved without ``model_max_length`` reports a huge sentinel)."""
    length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    return tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def _where(text_encoder, run_on: Optional[torch.device]) -> torch.device:
    return run_on if run_on is not None else next(text_encoder.parameters()).device


@torch.no_grad()
def encode_prompt(
    text_encoder,
    tokenizer,
    prompt: str,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    run_on: Optional[torch.device] = None,
) -> torch.Tensor:
    """Text conditioning ``[1, L, D]`` of ``prompt`` for SD 1.x/2.x: ``last_hidden_state`` of the padded tokens,
    moved to ``device``/``dtype`` when given. The encoder runs where it is (it is not moved): on ``run_on`` when
    given (an offloaded encoder's parameters are on "meta"), else on its parameters' device.

    ``L`` is the encoder's context length (77 for the released models): a tokenizer saved without a
    ``model_max_length`` reports a huge sentinel, so the length comes from the encoder's config whenever the
    tokenizer's is larger. SDXL: :func:`encode_text`."""
    ids = _tokens(tokenizer, text_encoder, prompt)
    return text_encoder(ids.to(_where(text_encoder, run_on)))[0].to(device=device, dtype=dtype)


def _text_modules(text) -> Tuple[Any, Any, Any, Any]:
    if isinstance(text, (tuple, list)):
        if len(text) not in (2, 4):
            raise FDIError(
                "encode_text takes (text_encoder, tokenizer) or (text_encoder, tokenizer, text_encoder_2, tokenizer_2)"
            )
        return tuple(text) + (None, None) if len(text) == 2 else tuple(text)  # type: ignore[return-value]
    return (
        text.text_encoder,
        text.tokenizer,
        getattr(text, "text_encoder_2", None),
        getattr(text, "tokenizer_2", None),
    )


@torch.no_grad()
def encode_text(
    text: Union[SDParts, Sequence[Any]],
    prompt: str,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    run_on: Optional[torch.device] = None,
) -> TextConditioning:
    """The text conditioning of ``prompt`` for any family, moved to ``device``/``dtype`` when given.

    ``text``: :class:`SDParts` (or anything with ``text_encoder``, ``tokenizer`` and, for SDXL,
    ``text_encoder_2``, ``tokenizer_2`` attributes, such as a diffusers pipeline), or the modules as a tuple
    ``(text_encoder, tokenizer[, text_encoder_2, tokenizer_2])``. SD 1.x/2.x (no second encoder):
    :func:`encode_prompt`, ``pooled=None``. SDXL: diffusers' ``StableDiffusionXLPipeline.encode_prompt`` for one
    positive prompt without clip skip — both encoders' penultimate hidden states concatenated (``[1, 77, 2048]``)
    and ``pooled`` = the second encoder's projected ``text_embeds`` ``[1, 1280]``. Encoders run as in
    :func:`encode_prompt` (on ``run_on``, else where their parameters are)."""
    te, tok, te2, tok2 = _text_modules(text)
    if te2 is None:
        return TextConditioning(encode_prompt(te, tok, prompt, device, dtype, run_on))
    if tok2 is None or te is None or tok is None:
        raise FDIError("an SDXL text conditioning needs both text encoders and both tokenizers")
    hidden = []
    pooled = None
    for encoder, tokenizer in ((te, tok), (te2, tok2)):
        out = encoder(_tokens(tokenizer, encoder, prompt).to(_where(encoder, run_on)), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        raise FDIError(
            "SDXL's second text encoder gave no projected text_embeds; load it as CLIPTextModelWithProjection"
        )
    embeds = torch.cat([h.to(hidden[-1].device) for h in hidden], dim=-1)
    return TextConditioning(embeds.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype))


def sdxl_added_cond(
    pooled: torch.Tensor,
    height: int,
    width: int,
    batch: int,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> Dict[str, torch.Tensor]:
    """SDXL's ``added_cond_kwargs`` for a diffusers UNet, built as ``StableDiffusionXLPipeline`` builds them:
    ``text_embeds`` ``[batch, 1280]`` (``pooled`` ``[1, 1280]`` repeated, or already ``[batch, 1280]``) and
    ``time_ids`` ``[batch, 6]`` = (original height, original width, crop top 0, crop left 0, target height,
    target width) in pixels, with original = target = ``height`` × ``width`` (the image's padded size)."""
    if pooled.ndim != 2 or pooled.shape[0] not in (1, batch):
        raise FDIError(f"pooled text embedding of shape {tuple(pooled.shape)}; expected [1, D] or [{batch}, D]")
    dtype = dtype or pooled.dtype
    device = device or pooled.device
    text_embeds = pooled.to(device=device, dtype=dtype).expand(batch, -1).contiguous()
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device).repeat(batch, 1)
    return {"text_embeds": text_embeds, "time_ids": time_ids}


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor, dtype: torch.dtype, run_on: Optional[torch.device] = None) -> torch.Tensor:
    """Images ``[b, 3, H, W]`` in 0..1 (H, W multiples of 8) → scaled latents ``[b, 4, H/8, W/8]`` float32:
    the posterior *mode* of a diffusers ``AutoencoderKL`` computing in ``dtype`` on ``run_on`` (default: the
    VAE's device; an offloaded VAE's is "meta"), shifted and scaled by its config."""
    where = run_on if run_on is not None else vae.device
    z = vae.encode((images * 2 - 1).to(device=where, dtype=dtype)).latent_dist.mode().float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor
