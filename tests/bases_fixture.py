"""Full-size SD 1.5 and SDXL base 1.0 single-file checkpoints with random weights, for the ComfyUI e2e tests.

The counterparts of ``sd21_fixture.py`` for the two other bases: the architectures are the published
ones exactly (SD 1.5 = ``stable-diffusion-v1-5/stable-diffusion-v1-5``: UNet 320/640/1280/1280, 8 heads, 768-wide
cross attention, conv projections, CLIP ViT-L/14 text encoder with quick_gelu, KL-f8 VAE at 0.18215;
SDXL = ``stabilityai/stable-diffusion-xl-base-1.0``: UNet 320/640/1280 with 1/2/10 linear-projection
transformer layers, 2048-wide cross attention and the text_time size/pooled embedding, CLIP-L plus the
32-layer OpenCLIP bigG with its projection, VAE at 0.13025), only the weights are random (PyTorch's and
the libraries' default initialisation, seeded, as ``sd21_fixture``).

How one is made (:func:`ensure_checkpoint`): a diffusers folder is written with the real writers
(``save_pretrained``, fp16 safetensors; the parts are built directly in fp16, one at a time, so the
builder's peak stays near the largest part: 5.6 GB for SDXL's 5.1 GB UNet); then ComfyUI's own ``DiffusersLoader`` and
``CheckpointSave`` node classes, run in a fresh interpreter of the ComfyUI under test, turn it into the
single file ``CheckpointLoaderSimple`` reads (SD 1.5 with ComfyUI's CPU default, an fp32 UNet, like
``v1-5-pruned-emaonly``; SDXL with ``--fp16-unet``, an fp16 file like ``sd_xl_base_1.0``); last, ComfyUI's
``comfy.model_detection`` must read the file as ``SD15`` / ``SDXL`` with epsilon prediction, or the
build fails and nothing is cached. The diffusers folder is removed afterwards (the tests need only the
single file; :func:`build_diffusers` rebuilds the same folder from the same seed).

Files: ``$FDI_TEST_CACHE`` (default ``~/.cache/comfyui-fdi-tests``) ``/checkpoints/fdi-bases/``
``sd15_random_v1.safetensors`` and ``sdxl_random_v1.safetensors``: sizes, build times and peak memory in
docs/testing.md. ``sdxl-v`` (``sdxl_random_vpred_ztsnr_v1.safetensors``) is the SDXL file with ComfyUI's ``v_pred``
and ``ztsnr`` keys added to its header (:func:`add_markers`, streamed: a v-prediction zero-terminal-SNR fine-tune as
they ship), read by ComfyUI as SDXL / V_PREDICTION with zsnr. :func:`header_checkpoint` writes sparse full-size
headers for the cheap schedule checks. Key fix as in ``sd21_fixture``: transformers 5 saves ``CLIPTextModel`` keys
without the ``text_model.`` prefix ComfyUI detects text encoders by.

Needs diffusers and transformers (run under ComfyUI's venv, which has both). As a script::

    python tests/bases_fixture.py --comfyui /path/to/ComfyUI sd1.5 sdxl
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent / "tools"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import sd21_fixture  # noqa: E402

#: the folder of these fixtures under the cache's ``checkpoints`` and ``diffusers``
SUBDIR = "fdi-bases"


# ------------------------------------------------------------------------------------------------ configs


def sd15_unet_config() -> dict:
    """SD 1.5's UNet (``stable-diffusion-v1-5/stable-diffusion-v1-5`` ``unet/config.json``)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        use_linear_projection=False,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        downsample_padding=1,
        mid_block_scale_factor=1,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def sdxl_unet_config() -> dict:
    """SDXL base 1.0's UNet (``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json``)."""
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        downsample_padding=1,
        mid_block_scale_factor=1,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def vae_config(scaling_factor: float, sample_size: int, force_upcast: bool) -> dict:
    """The KL-f8 VAE (the same network in SD 1.5, 2.1 and SDXL; SDXL's has another scaling factor)."""
    return {
        **sd21_fixture.vae_config(),
        "scaling_factor": scaling_factor,
        "sample_size": sample_size,
        "force_upcast": force_upcast,
    }


def clip_l_config() -> dict:
    """OpenAI CLIP ViT-L/14's text tower (SD 1.5's text encoder, SDXL's first)."""
    return dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def clip_g_config() -> dict:
    """OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's ``text_encoder_2``)."""
    return dict(
        vocab_size=49408,
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=1280,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


@dataclass(frozen=True)
class Base:
    """One base's fixture: what is built and what ComfyUI must detect in the single file."""

    family: str  #: the pack's family name (``fdi.families``)
    stem: str  #: file stem (``sd15_random``)
    version: str  #: bump when the architecture or the writer changes (a new file name: stale ones are never read)
    pipeline: str  #: diffusers pipeline class in ``model_index.json``
    comfy_config: str  #: ``comfy.supported_models`` class ComfyUI's detection must pick
    comfy_flags: dict = field(default_factory=dict)  #: ComfyUI args for the CheckpointSave run
    clip_probe: str = ""  #: a key the single file's text encoder part must have
    source: str = ""  #: the base whose file this one copies, adding ``markers`` (``""``: built from scratch)
    markers: tuple = ()  #: ComfyUI's marker keys the file carries (``v_pred``, ``ztsnr``)
    model_type: str = "EPS"  #: the ``comfy.model_base.ModelType`` ComfyUI must read


BASES = {
    b.family: b
    for b in (
        Base(
            "sd1.5",
            "sd15_random",
            "1",
            "StableDiffusionPipeline",
            "SD15",
            {},
            "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight",
        ),
        Base(
            "sdxl",
            "sdxl_random",
            "1",
            "StableDiffusionXLPipeline",
            "SDXL",
            {"fp16_unet": True},
            "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight",
        ),
        # a v-prediction fine-tune on the zero-terminal-SNR schedule as they ship: SDXL's file with the two markers
        Base(
            "sdxl-v",
            "sdxl_random_vpred_ztsnr",
            "1",
            "StableDiffusionXLPipeline",
            "SDXL",
            {"fp16_unet": True},
            "conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight",
            source="sdxl",
            markers=("v_pred", "ztsnr"),
            model_type="V_PREDICTION",
        ),
    )
}


def base(family: str) -> Base:
    if family not in BASES:
        raise KeyError(f"no random fixture for {family!r}; there are {', '.join(BASES)}")
    return BASES[family]


# ------------------------------------------------------------------------------------------------ paths


def checkpoint_name(family: str) -> str:
    """The single file's name as ComfyUI lists it under ``checkpoints`` (the cache's ``checkpoints`` folder)."""
    b = base(family)
    return f"{SUBDIR}/{b.stem}_v{b.version}.safetensors"


def checkpoint_path(family: str) -> Path:
    return sd21_fixture.cache_dir() / "checkpoints" / checkpoint_name(family)


# ------------------------------------------------------------------------------------------------ diffusers folder


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _save(module, folder: Path) -> None:
    """``save_pretrained`` in fp16 safetensors, one file (ComfyUI's DiffusersLoader reads no shards)."""
    module.to(torch.float16).save_pretrained(folder, safe_serialization=True, max_shard_size="100GB")


def _text_encoder(config: dict, with_projection: bool, folder: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with _default_dtype(torch.float16):
        model = cls(CLIPTextConfig(**config))
    _save(model, folder)
    del model
    sd21_fixture._prefix_text_model_keys(folder)
    assert (folder / "model.safetensors").is_file(), f"no single model.safetensors in {folder}"


def build_diffusers(family: str, folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write the random full-size diffusers folder of ``family`` (``sd1.5`` or ``sdxl``; fp16 safetensors).

    ``tokenizer_dir`` holds a CLIP BPE ``vocab.json`` + ``merges.txt`` (ComfyUI's ``comfy/sd1_tokenizer``;
    every tokenizer of these bases uses that vocabulary). Each part is built in fp16 and freed before the next.
    Atomic: the folder appears under its final name only when complete.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    b = base(family)
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    xl = family == "sdxl"
    with _default_dtype(torch.float16):
        unet = UNet2DConditionModel(**(sdxl_unet_config() if xl else sd15_unet_config()))
    _save(unet, tmp / "unet")
    del unet
    with _default_dtype(torch.float16):
        vae = AutoencoderKL(**(vae_config(0.13025, 1024, True) if xl else vae_config(0.18215, 512, False)))
    _save(vae, tmp / "vae")
    del vae
    _text_encoder(clip_l_config(), False, tmp / "text_encoder")
    vocab, merges = str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt")
    CLIPTokenizer(vocab, merges, pad_token="<|endoftext|>").save_pretrained(tmp / "tokenizer")
    index = {
        "_class_name": b.pipeline,
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    if xl:
        _text_encoder(clip_g_config(), True, tmp / "text_encoder_2")
        CLIPTokenizer(vocab, merges, pad_token="!").save_pretrained(tmp / "tokenizer_2")
        index.update(
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            force_zeros_for_empty_prompt=True,
        )
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    DDIMScheduler(**sd21_fixture.scheduler_config()).save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    (tmp / "FIXTURE_VERSION").write_text(b.version)
    os.replace(tmp, folder)
    return folder


# ------------------------------------------------------------------------------------------------ ComfyUI steps

#: run in a fresh ComfyUI interpreter (``--cpu`` + the base's flags): DiffusersLoader → CheckpointSave
_SAVE = """
import resource
import folder_paths
import nodes
from comfy_extras.nodes_model_merging import CheckpointSave
folder_paths.add_model_folder_path("diffusers", sys.argv[1])
model, clip, vae = nodes.DiffusersLoader().load_checkpoint(sys.argv[2])
CheckpointSave().save(model, clip, vae, filename_prefix="checkpoints/" + sys.argv[3])
print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

#: ComfyUI's detection on a single file's shapes (as ``CheckpointLoaderSimple``: the UNet config from
#: ``model.diffusion_model.*``, the model type from its probe tensors); every key's name for the other checks
_DETECT = """
import torch
from safetensors import safe_open
import comfy.model_detection
P = "model.diffusion_model."
MARKERS = ("v_pred", "ztsnr", "edm_mean", "edm_std", "edm_vpred.sigma_max", "edm_vpred.sigma_min")
res = []
for path in sys.argv[1:]:
    with safe_open(path, framework="pt") as fh:
        keys = list(fh.keys())
        sd = {}
        for k in keys:
            if k.startswith(P):
                sl = fh.get_slice(k)
                dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[sl.get_dtype()]
                real = k.endswith("norm1.bias")
                sd[k] = fh.get_tensor(k) if real else torch.empty(sl.get_shape(), dtype=dt, device="meta")
            elif k in MARKERS:
                sd[k] = fh.get_tensor(k)
        dtypes = sorted({str(fh.get_slice(k).get_dtype()) for k in keys if k.startswith(P)})
    cfg = comfy.model_detection.model_config_from_unet(sd, P)
    model_type = cfg.model_type(sd, P).name if cfg is not None else None
    res.append({"config": type(cfg).__name__ if cfg is not None else None, "model_type": model_type,
                "zsnr": bool(cfg.sampling_settings.get("zsnr", False)) if cfg is not None else None,
                "keys": keys, "unet_dtypes": dtypes})
print(json.dumps(res))
"""


def comfy_detect(comfyui_dir: str, *paths: Path) -> list:
    """Per single file: ``{"config": comfy.supported_models class name, "model_type": "EPS"…, "zsnr": bool,
    "keys": [...], "unet_dtypes": [...]}`` by ComfyUI's own detection (the marker keys included), in a fresh
    interpreter."""
    import comfyui_harness as harness

    code = harness.script(_DETECT, comfyui_dir, None, load_pack=False)
    return harness.run_json(code, None, timeout=600, args=paths)


def check_checkpoint(comfyui_dir: str, family: str, path: Path) -> dict:
    """Fail (``AssertionError``) unless ComfyUI reads ``path`` as ``family``'s base with its prediction (epsilon, or
    for ``sdxl-v`` v-prediction on the zero-terminal-SNR schedule), with a text encoder and a VAE; the detection
    record."""
    b = base(family)
    (found,) = comfy_detect(comfyui_dir, path)
    keys = set(found.pop("keys"))
    want = (b.comfy_config, b.model_type, "ztsnr" in b.markers)
    got = (found["config"], found["model_type"], found["zsnr"])
    assert got == want, f"ComfyUI reads {path.name} as {got} (config, model type, zsnr), not {want}"
    assert b.clip_probe in keys, f"{path.name} has no {b.clip_probe}"
    assert "first_stage_model.decoder.conv_out.weight" in keys, f"{path.name} has no VAE"
    return found


def add_markers(src: Path, dst: Path, markers) -> Path:
    """``dst``: the single file ``src`` with ComfyUI's marker keys ``markers`` added to its header (empty float32
    tensors at the end of the data, as CheckpointSave writes ``v_pred`` / ``ztsnr``); the data is streamed, not
    loaded. Atomic; a ``dst`` ComfyUI's detection does not read as intended is removed by the caller's check."""
    tmp = dst.with_name(dst.name + ".partial")
    with open(src, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        end = max(info["data_offsets"][1] for key, info in header.items() if key != "__metadata__")
        for key in markers:
            header[key] = {"dtype": "F32", "shape": [0], "data_offsets": [end, end]}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(tmp, "wb") as out:
            out.write(len(raw).to_bytes(8, "little") + raw)
            shutil.copyfileobj(fh, out, 64 << 20)
    os.replace(tmp, dst)
    return dst


def ensure_checkpoint(family: str, comfyui_dir: str) -> str:
    """The name (under ``checkpoints``, :func:`checkpoint_name`) of the cached single file of ``family``, built on
    first use (see the module doc) by the ComfyUI at ``comfyui_dir``."""
    import comfyui_harness as harness

    b = base(family)
    ckpt = checkpoint_path(family)
    if ckpt.is_file():
        return checkpoint_name(family)
    if b.source:  # a copy of another base's file with marker keys
        ensure_checkpoint(b.source, comfyui_dir)
        add_markers(checkpoint_path(b.source), ckpt, b.markers)
        try:
            check_checkpoint(comfyui_dir, family, ckpt)
        except AssertionError:
            ckpt.unlink()
            raise
        return checkpoint_name(family)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    # a fixed work folder outside the folders ComfyUI lists, cleared first: a killed build leaves no stray copy
    work = sd21_fixture.cache_dir() / f"{SUBDIR}-build" / b.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        t0 = time.time()
        build_diffusers(family, work / "diffusers" / b.stem, Path(comfyui_dir) / "comfy" / "sd1_tokenizer")
        t1 = time.time()
        comfy_base = work / "comfy"
        (comfy_base / "custom_nodes").mkdir(parents=True)
        code = harness.script(_SAVE, comfyui_dir, comfy_base, load_pack=False, flags=b.comfy_flags)
        saved = harness.run_json(code, comfy_base, timeout=3600, args=[work / "diffusers", b.stem, b.stem])
        made = sorted((comfy_base / "output" / "checkpoints").glob(f"{b.stem}_*.safetensors"))
        assert made, "CheckpointSave wrote no checkpoint"
        shutil.rmtree(work / "diffusers")
        t2 = time.time()
        found = check_checkpoint(comfyui_dir, family, made[-1])
        tmp = ckpt.with_name(ckpt.name + ".partial")
        shutil.move(str(made[-1]), tmp)
        os.replace(tmp, ckpt)
        print(
            json.dumps(
                {
                    "family": family,
                    "file": str(ckpt),
                    "size_gb": round(ckpt.stat().st_size / 1e9, 3),
                    "diffusers_build_s": round(t1 - t0, 1),
                    "comfy_save_s": round(t2 - t1, 1),
                    "builder_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                    "comfy_save_peak_rss_gb": round(saved["peak_rss_gb"], 2),
                    **found,
                }
            ),
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if work.parent.is_dir() and not any(work.parent.iterdir()):
            work.parent.rmdir()
    return checkpoint_name(family)


# ------------------------------------------------------------------------------------------------ header files

#: the text-encoder keys the family checks read (SDXL: CLIP-L as embedder 0, OpenCLIP-G as embedder 1)
_TEXT_PROBES = {
    "sd1.5": {"cond_stage_model.transformer.text_model.final_layer_norm.weight": [768]},
    "sdxl": {
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [768],
        "conditioner.embedders.1.model.ln_final.weight": [1280],
    },
}


def header_checkpoint(family: str, path: Path, markers=()) -> Path:
    """A *sparse* single file of ``family`` (``sd1.5``/``sdxl``): the header of the full-size UNet in the original SD
    layout (every key and shape, from the shipped configs ``fdi/configs``), the text encoders' probe keys and the
    marker keys ``markers`` (``v_pred``, ``ztsnr``: empty float32 tensors, as ComfyUI writes them); the data is
    zeros the file system does not store (a few MB on disk). What ComfyUI's model detection and the CLI's header
    checks read, without a 5 GB build."""
    from diffusers import UNet2DConditionModel
    from tiny_bases import ldm_unet_state_dict

    from fdi.models import family_config_dir

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(family_config_dir(family) / "unet"))
    shapes = {k: list(v.shape) for k, v in ldm_unet_state_dict(unet).items()}
    shapes.update(_TEXT_PROBES[family])
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2 * int(torch.tensor(shape).prod())
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    for key in markers:
        header[key] = {"dtype": "F32", "shape": [0], "data_offsets": [offset, offset]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + offset)
    return Path(path)


# ------------------------------------------------------------------------------------------------ adapter


def random_adapter(family: str, token_width: int = 768, num_tokens: int = 32, seed: int = 0):
    """A *non-fresh* FDI adapter for ``family`` (its levels: ``FDIAdapterConfig.for_family``), with the zero-initialised
    output convs and gates randomised as in ``sd21_fixture.random_adapter``, so that its guidance is not a no-op."""
    from fdi.adapter import FDIAdapter, FDIAdapterConfig

    torch.manual_seed(seed)
    config = FDIAdapterConfig.for_family(family, token_width=token_width, num_tokens=num_tokens)
    adapter = FDIAdapter(config, base_family=family, label=f"e2e-{family}")
    with torch.no_grad():
        for head in adapter.guidance_heads:
            head.out.weight.normal_(0, 0.02)
            head.out.bias.normal_(0, 0.1)
        for gate in adapter.gates:
            gate.uniform_(0.2, 0.8)
    return adapter.eval()


def fresh_adapter(family: str, token_width: int = 768, num_tokens: int = 32, seed: int = 0):
    """A freshly initialised adapter for ``family`` (zero output convs and gates: an exact no-op on the UNet)."""
    from fdi.adapter import FDIAdapter, FDIAdapterConfig

    torch.manual_seed(seed)
    config = FDIAdapterConfig.for_family(family, token_width=token_width, num_tokens=num_tokens)
    return FDIAdapter(config, base_family=family, label=f"e2e-{family}-fresh").eval()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="build the random SD 1.5 / SDXL single-file fixtures")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR", ""), help="ComfyUI checkout")
    parser.add_argument("families", nargs="+", choices=sorted(BASES))
    ns = parser.parse_args()
    if not ns.comfyui:
        parser.error("give --comfyui or set COMFYUI_DIR")
    for fam in ns.families:
        print(fam, "->", ensure_checkpoint(fam, ns.comfyui), flush=True)
