"""Tiny random SD 1.5-like and SDXL-like diffusers folders for tests, written with diffusers' own writers.

SD 1.5-like: SD 2.1's tiny layout of :mod:`tests.tiny_sd` (widths ``(32, 32, 64, 64)``) with SD 1.5's
differences: conv-projection transformers (``use_linear_projection=False``), a ``quick_gelu`` text tower,
a tokenizer padded with the end token. SDXL-like: SDXL's structure, narrow — three levels ``(32, 64, 64)``
with a ``DownBlock2D`` first, 1/2/2 transformer layers per level, two text towers (a ``CLIPTextModel`` of
width 32 and a ``CLIPTextModelWithProjection`` of width 32, projection 32) whose concatenated width (64)
is the cross-attention width, and the ``text_time`` addition embedding (time-id width 8: 6 × 8 + 32 = 80).
Tokenizers: 16 tokens over a letter vocabulary that holds ``!`` at id 0 as CLIP's does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_sd import TINY_CHANNELS, TINY_MAX_LENGTH, tiny_scheduler, tiny_vae

XL_CHANNELS = (32, 64, 64)
XL_TEXT_WIDTHS = (32, 32)
XL_PROJECTION = 32
XL_TIME_WIDTH = 8
XL_CONTEXT = sum(XL_TEXT_WIDTHS)
END = "<|endoftext|>"

_WORDS = ("the", "and", "a", "photo", "of", "rain", "snow", "clean")


def tiny_clip_tokenizer(pad_token: str = END):
    """A 16-token CLIP BPE tokenizer over ``!``, the letters and a few merged words, padding with ``pad_token``."""
    from transformers import CLIPTokenizer

    chars = "!abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab[END] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TINY_MAX_LENGTH, pad_token=pad_token)


def _text_config(tok, width: int, act: str, projection: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_LENGTH,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random SD 1.5-like ``StableDiffusionPipeline`` folder (safetensors)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer(END)
    text = CLIPTextModel(_text_config(tok, 32, "quick_gelu")).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=TINY_CHANNELS,
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=False,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=tiny_scheduler("epsilon"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_xl_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=XL_CHANNELS,
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 2),
        norm_num_groups=8,
        cross_attention_dim=XL_CONTEXT,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=XL_TIME_WIDTH,
        projection_class_embeddings_input_dim=6 * XL_TIME_WIDTH + XL_PROJECTION,
    ).eval()


def tiny_xl_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionXLPipeline`` (not saved)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok, tok2 = tiny_clip_tokenizer(END), tiny_clip_tokenizer("!")
    text = CLIPTextModel(_text_config(tok, XL_TEXT_WIDTHS[0], "quick_gelu")).eval()
    text2 = CLIPTextModelWithProjection(_text_config(tok2, XL_TEXT_WIDTHS[1], "gelu", XL_PROJECTION)).eval()
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.13025)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text2,
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=tiny_xl_unet(seed),
        scheduler=tiny_scheduler("epsilon"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random SDXL-like ``StableDiffusionXLPipeline`` folder (safetensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_xl_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder
