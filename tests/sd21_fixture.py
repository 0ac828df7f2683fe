"""A full-size Stable Diffusion 2.1 (base, epsilon) checkpoint with random weights, for e2e tests.

Real SD 2.1 weights cannot be downloaded here, and none are needed to test plumbing: the
architecture is SD 2.1's exactly (UNet 320/640/1280/1280 with linear-projection transformers and
1024-wide cross attention, the KL-f8 VAE, the 23-layer OpenCLIP-H text tower), only the weights
are random. Random-weight outputs say nothing about quality; they do say whether two code paths
compute the same thing (parity) and whether a graph runs.

The folder is written with the real writers (``save_pretrained``, fp16 safetensors), so that
ComfyUI's ``DiffusersLoader`` loads it; the e2e test then runs ComfyUI's ``CheckpointSave`` on
it to make the single-file checkpoint that ``CheckpointLoaderSimple`` (the loader users use)
reads. Both are cached outside the repository (``$FDI_TEST_CACHE`` or
``~/.cache/comfyui-fdi-tests``): together about 5 GB, built once in a few minutes.

Key fix: transformers 5 saves ``CLIPTextModel`` weights without the ``text_model.`` prefix
(``embeddings.…`` instead of ``text_model.embeddings.…``). ComfyUI recognises an SD 2.x text
encoder by ``text_model.encoder.layers.22…`` keys; without the prefix it would load the file as
a different encoder. :func:`build_sd21_diffusers` rewrites the keys after saving.

Needs diffusers and transformers (run under ComfyUI's venv, which has both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

FIXTURE_NAME = "sd21_random"
#: bump when the architecture or the writer changes, so stale caches are rebuilt
FIXTURE_VERSION = "1"


def cache_dir() -> Path:
    """Where the big fixtures live (never inside the repository)."""
    root = os.environ.get("FDI_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "comfyui-fdi-tests")
    return Path(root)


def unet_config() -> dict:
    """The SD 2.1-base UNet config (diffusers ``UNet2DConditionModel``)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        act_fn="silu",
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def vae_config() -> dict:
    """The SD KL-f8 VAE config (diffusers ``AutoencoderKL``)."""
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        act_fn="silu",
        norm_num_groups=32,
        scaling_factor=0.18215,
    )


def text_config() -> dict:
    """The SD 2.x OpenCLIP ViT-H text tower as a ``CLIPTextModel`` config (23 layers used)."""
    return dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=512,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def scheduler_config() -> dict:
    """SD 2.1-base's scheduler settings (epsilon prediction, scaled-linear betas)."""
    return dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        num_train_timesteps=1000,
    )


def _prefix_text_model_keys(folder: Path) -> None:
    """Rewrite ``text_encoder/model.safetensors`` keys to carry the ``text_model.`` prefix."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    sd = load_file(str(path))
    if all(k.startswith("text_model.") for k in sd):
        return
    fixed = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in sd.items()}
    save_file(fixed, str(path), metadata={"format": "pt"})


def build_sd21_diffusers(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write a random full-size SD 2.1-base diffusers folder (fp16 safetensors) to ``folder``.

    ``tokenizer_dir`` holds a CLIP BPE ``vocab.json`` + ``merges.txt`` (ComfyUI ships one in
    ``comfy/sd1_tokenizer``; SD 2.x uses the same vocabulary). Writes atomically: the folder appears
    under its final name only when complete.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config())
    unet.to(torch.float16).save_pretrained(tmp / "unet", safe_serialization=True)
    del unet
    vae = AutoencoderKL(**vae_config())
    vae.to(torch.float16).save_pretrained(tmp / "vae", safe_serialization=True)
    del vae
    text = CLIPTextModel(CLIPTextConfig(**text_config()))
    text.to(torch.float16).save_pretrained(tmp / "text_encoder", safe_serialization=True)
    del text
    _prefix_text_model_keys(tmp / "text_encoder")
    tok = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), pad_token="!")
    tok.save_pretrained(tmp / "tokenizer")
    DDIMScheduler(**scheduler_config()).save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    (tmp / "FIXTURE_VERSION").write_text(FIXTURE_VERSION)
    os.replace(tmp, folder)
    return folder


def diffusers_fixture(tokenizer_dir: Path) -> Path:
    """The cached diffusers folder, built on first use."""
    folder = cache_dir() / "diffusers" / FIXTURE_NAME
    marker = folder / "FIXTURE_VERSION"
    if not (marker.is_file() and marker.read_text() == FIXTURE_VERSION):
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_sd21_diffusers(folder, tokenizer_dir)
    return folder


def checkpoint_path() -> Path:
    """Where the single-file checkpoint made by ComfyUI's ``CheckpointSave`` is cached."""
    return cache_dir() / "checkpoints" / f"{FIXTURE_NAME}_v{FIXTURE_VERSION}.safetensors"


def random_adapter(token_width: int = 768, num_tokens: int = 32, seed: int = 0, base_family: str = "sd2.1-base"):
    """A *non-fresh* SD 2.1-width FDI adapter: its zero-initialised output convs and gates are randomised.

    A fresh adapter is an exact no-op on the UNet; tests that must see guidance change a prediction
    or an image need one whose guidance is not zero.
    """
    from fdi.adapter import FDIAdapter, FDIAdapterConfig

    torch.manual_seed(seed)
    adapter = FDIAdapter(
        FDIAdapterConfig(token_width=token_width, num_tokens=num_tokens), base_family=base_family, label="e2e"
    )
    with torch.no_grad():
        for head in adapter.guidance_heads:
            head.out.weight.normal_(0, 0.02)
            head.out.bias.normal_(0, 0.1)
        for gate in adapter.gates:
            gate.uniform_(0.2, 0.8)
    return adapter.eval()


#: the v-prediction single file (SD 2.1-v, 768 kind) made from :func:`checkpoint_path`'s; its own folder and version
V_FIXTURE_DIR = "fdi-vpred"
V_FIXTURE_VERSION = "1"
#: ComfyUI's SD20.model_type probe: a v-prediction SD 2.x file has a population std > 0.09 in this LayerNorm bias
V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PROBE_STD = 0.2


def v_checkpoint_name() -> str:
    """The v single file's name as ComfyUI lists it under ``checkpoints`` (a subfolder of :func:`checkpoint_path`'s)."""
    return f"{V_FIXTURE_DIR}/{FIXTURE_NAME}_vpred_v{V_FIXTURE_VERSION}.safetensors"


def v_checkpoint_path() -> Path:
    return checkpoint_path().parent / v_checkpoint_name()


def build_v_checkpoint(src: Path, dst: Path, seed: int = 0) -> Path:
    """Copy the single file ``src`` to ``dst`` as an SD 2.1-v checkpoint: every tensor as is, except the probe bias
    (:data:`V_PROBE`), drawn from N(0, 0.2²) so that ComfyUI's test (std > 0.09) and
    :func:`fdi.checkpoints.inspect_single_file` both read it as v-prediction; the metadata says
    ``modelspec.predict_key: v``. Atomic (``.partial`` first)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    g = torch.Generator().manual_seed(seed)
    bias = tensors[V_PROBE]
    tensors[V_PROBE] = (torch.randn(bias.shape, generator=g) * V_PROBE_STD).to(bias.dtype)
    meta.pop("prompt", None)
    meta["modelspec.predict_key"] = "v"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    del tensors
    os.replace(tmp, dst)
    return dst


def v_checkpoint() -> Path:
    """The cached v single file, built on first use from the cached epsilon one (``checkpoint_path()``, must exist)."""
    dst = v_checkpoint_path()
    if not dst.is_file():
        build_v_checkpoint(checkpoint_path(), dst)
    return dst


def ensure_checkpoint(comfyui_dir: str) -> str:
    """The name of the cached single-file SD 2.1 checkpoint (:func:`checkpoint_path`), built on first use by the
    ComfyUI at ``comfyui_dir``: its ``DiffusersLoader`` → ``CheckpointSave`` on :func:`diffusers_fixture`'s folder,
    in a short-lived server (``tools/comfyui_harness.py``, which must be importable: the tests put ``tools/`` on
    ``sys.path``)."""
    import shutil
    import tempfile

    from comfyui_harness import ComfyServer, node

    ckpt = checkpoint_path()
    if ckpt.is_file():
        return ckpt.name
    diffusers_dir = diffusers_fixture(Path(comfyui_dir) / "comfy" / "sd1_tokenizer")
    base = Path(tempfile.mkdtemp(prefix="fdi-fixture-"))
    try:
        (base / "custom_nodes").mkdir()
        yaml = base / "extra_model_paths.yaml"
        yaml.write_text(f"fixture:\n  diffusers: {diffusers_dir.parent}\n")
        server = ComfyServer(base, yaml, comfyui=comfyui_dir)
        try:
            server.run_ok(
                {
                    "1": node("DiffusersLoader", model_path=diffusers_dir.name),
                    "2": node(
                        "CheckpointSave",
                        model=["1", 0],
                        clip=["1", 1],
                        vae=["1", 2],
                        filename_prefix="checkpoints/sd21_fixture",
                    ),
                }
            )
        finally:
            server.stop()
        made = sorted((base / "output" / "checkpoints").glob("sd21_fixture_*.safetensors"))
        assert made, "CheckpointSave wrote no checkpoint"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".partial")
        shutil.move(str(made[-1]), tmp)
        os.replace(tmp, ckpt)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return ckpt.name
