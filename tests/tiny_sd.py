"""Tiny random Stable Diffusion 2.1-shaped models for tests, written with diffusers' own writers.

The layout is SD 2.1's — UNet with three ``CrossAttnDownBlock2D`` and a ``DownBlock2D``, mirrored
up blocks, two layers per block, linear-projection transformers; a KL VAE with three
downsamplings (latent = image / 8); a CLIP text tower; a DDIM schedule with SD 2.1's betas — only
narrow: widths ``(32, 32, 64, 64)``, text width 32, a 16-token tokenizer built from a vocabulary
written here. :func:`build_tiny_sd` saves a diffusers ``StableDiffusionPipeline`` folder that the
library loads through its real loading code.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CHANNELS = (32, 32, 64, 64)
TINY_TEXT_WIDTH = 32
TINY_MAX_LENGTH = 16

_WORDS = ("the", "and", "a", "photo", "of", "rain", "snow", "clean")


def tiny_tokenizer():
    """A CLIP BPE tokenizer over single letters plus a few merged words (no files needed)."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    for c in letters:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for word in _WORDS:  # merge each word left to right: t h → th, th e</w> → the</w>
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TINY_MAX_LENGTH)


def tiny_unet(prediction_seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(prediction_seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=TINY_CHANNELS,
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=(2, 4, 8, 8),
        use_linear_projection=True,
    ).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def tiny_text_encoder(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TINY_TEXT_WIDTH,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_MAX_LENGTH,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon"):
    """SD 2.1's DDIM config (scaled-linear betas 0.00085..0.012, leading spacing, offset 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
        timestep_spacing="leading",
    )


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny random SD pipeline folder (safetensors) with the given prediction type."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    text = tiny_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id)
    unet = tiny_unet(seed)
    vae = tiny_vae()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=tiny_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_adapter_config(token_width: int = 32, num_tokens: int = 8):
    """An adapter config matching the tiny UNet (and, by default, the tiny Q-Former: 8 × 32 tokens)."""
    from fdi.adapter import FDIAdapterConfig

    return FDIAdapterConfig(
        channels=TINY_CHANNELS, token_width=token_width, num_tokens=num_tokens, res_blocks=1, heads=4, se_reduction=4
    )


def randomise_adapter(adapter, seed: int = 1, scale: float = 0.5):
    """Make a fresh adapter act like a trained one: random zero-initialised layers and gates."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in adapter.guidance_heads:
            head.out.weight.copy_(
                torch.randn(head.out.weight.shape, generator=g) * scale / head.out.weight.shape[1] ** 0.5
            )
            head.out.bias.copy_(torch.randn(head.out.bias.shape, generator=g) * scale * 0.1)
        for gate in adapter.gates:
            gate.copy_(torch.rand(gate.shape, generator=g) * scale)
    return adapter


def make_adapter(seed: int = 0, trained: bool = True, family: str = "custom-base", **config):
    """A tiny adapter for the tiny UNet (labelled ``a<seed>``), randomised to act as a trained one unless
    ``trained=False``; ``config`` overrides fields of :func:`tiny_adapter_config`."""
    import json

    from fdi.adapter import FDIAdapter, FDIAdapterConfig

    torch.manual_seed(seed)
    cfg = (
        tiny_adapter_config()
        if not config
        else FDIAdapterConfig(**{**json.loads(tiny_adapter_config().to_json()), **config})
    )
    a = FDIAdapter(cfg, base_family=family, encoder="blip2-tiny:abcd", label=f"a{seed}").eval()
    return randomise_adapter(a, seed=seed + 1) if trained else a


def tiny_fdi(seed: int = 0, width: int = 32):
    """A random 8-token FDI (2 pairs, labelled ``f<seed>``) for the tiny adapter's encoder name."""
    from fdi.instruction import FDI

    g = torch.Generator().manual_seed(seed)
    return FDI(torch.randn(8, width, generator=g), encoder="blip2-tiny:abcd", n_pairs=2, label=f"f{seed}")
