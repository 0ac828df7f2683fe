"""Tiny random SD 1.5-like and SDXL-like diffusers folders for tests, written with diffusers' own writers.

SD 1.5-like: SD 2.1's tiny layout of :mod:`tests.tiny_sd` (widths ``(32, 32, 64, 64)``) with SD 1.5's
differences: conv-projection transformers (``use_linear_projection=False``), a ``quick_gelu`` text tower,
a tokenizer padded with the end token. SDXL-like: SDXL's structure, narrow — three levels ``(32, 64, 64)``
with a ``DownBlock2D`` first, 1/2/2 transformer layers per level, two text towers (a ``CLIPTextModel`` of
width 32 and a wider ``CLIPTextModelWithProjection`` of width 48, projection 32, as CLIP-L is narrower than
OpenCLIP-G) whose concatenated width (80) is the cross-attention width, and the ``text_time`` addition embedding
(time-id width 8: 6 × 8 + 32 = 80). Tokenizers: 16 tokens over a letter vocabulary that holds ``!`` at id 0 as
CLIP's does.

:func:`write_tiny_single_file` writes either as a single file in the original SD / ComfyUI key layout, which
diffusers' ``from_single_file`` reads back with the folder as its config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_sd import TINY_CHANNELS, TINY_MAX_LENGTH, tiny_scheduler, tiny_vae

XL_CHANNELS = (32, 64, 64)
XL_TEXT_WIDTHS = (32, 48)
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


# ------------------------------------------------------------------------------------------------ single files

#: diffusers resnet names → the original SD (LDM) ones
_LDM_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_LDM_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _ldm_unet_key(key: str, per_level: int, up_attention: dict) -> str:
    """The original SD name of a diffusers ``UNet2DConditionModel`` key (``per_level``: layers per block + 1)."""
    parts = key.split(".")
    for d, ldm in _LDM_UNET_TOP.items():
        if key.startswith(d + "."):
            return ldm + key[len(d) :]
    if parts[0] in ("down_blocks", "up_blocks"):
        b, kind = int(parts[1]), parts[2]
        down = parts[0] == "down_blocks"
        if kind in ("downsamplers", "upsamplers"):  # parts[3] is 0
            i = (b + 1) * per_level if down else b * per_level + per_level - 1
            where = "0.op" if down else f"{2 if up_attention[b] else 1}.conv"
            rest = parts[5:]
            return f"{'input' if down else 'output'}_blocks.{i}.{where}." + ".".join(rest)
        j = int(parts[3])
        i = b * per_level + j + 1 if down else b * per_level + j
        rest = parts[4:]
        slot = 0 if kind == "resnets" else 1
        if kind == "resnets":
            rest = [_LDM_RESNET.get(rest[0], rest[0])] + rest[1:]
        return f"{'input' if down else 'output'}_blocks.{i}.{slot}." + ".".join(rest)
    if parts[0] == "mid_block":
        slot = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        rest = parts[3:]
        if parts[1] == "resnets":
            rest = [_LDM_RESNET.get(rest[0], rest[0])] + rest[1:]
        return f"middle_block.{slot}." + ".".join(rest)
    raise KeyError(f"no original SD name for UNet key {key}")


def ldm_unet_state_dict(unet) -> dict:
    """A diffusers UNet's weights under the original SD single-file names (``model.diffusion_model.…``), the layout
    diffusers' ``from_single_file`` converts back (the inverse of its ``convert_ldm_unet_checkpoint``)."""
    per_level = unet.config.layers_per_block + 1
    up_attention = {i: hasattr(block, "attentions") for i, block in enumerate(unet.up_blocks)}
    return {
        "model.diffusion_model." + _ldm_unet_key(k, per_level, up_attention): v.detach().clone()
        for k, v in unet.state_dict().items()
    }


_LDM_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_vae_key(key: str, levels: int) -> str:
    parts = key.split(".")
    side = parts[0]
    if side not in ("encoder", "decoder"):  # quant_conv, post_quant_conv
        return key
    rest = ".".join(parts[1:])
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out." + rest[len("conv_norm_out.") :]
    if parts[1] in ("down_blocks", "up_blocks"):
        b = int(parts[2])
        name = "down" if side == "encoder" else "up"
        level = b if side == "encoder" else levels - 1 - b
        if parts[3] in ("downsamplers", "upsamplers"):
            return f"{side}.{name}.{level}.{'downsample' if side == 'encoder' else 'upsample'}." + ".".join(parts[5:])
        tail = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.{name}.{level}.block.{parts[4]}.{tail}"
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{side}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
        inner = ".".join(parts[4:])
        for d, ldm in _LDM_VAE_ATTENTION.items():
            if inner.startswith(d + "."):
                return f"{side}.mid.attn_1.{ldm}." + inner[len(d) + 1 :]
    return key  # conv_in, conv_out


def ldm_vae_state_dict(vae) -> dict:
    """A diffusers ``AutoencoderKL``'s weights under the original SD names (``first_stage_model.…``; the mid
    attention's projections as 1×1 convolutions, as the original checkpoints store them)."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for k, v in vae.state_dict().items():
        name = _ldm_vae_key(k, levels)
        v = v.detach().clone()
        if ".mid.attn_1." in name and name.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out["first_stage_model." + name] = v
    return out


def _text_model_keys(text_encoder) -> dict:
    """A transformers CLIP text model's weights with the ``text_model.`` prefix (transformers 5 drops it for
    ``CLIPTextModel``)."""
    return {
        k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v.detach().clone()
        for k, v in text_encoder.state_dict().items()
    }


#: transformers CLIP layer names → OpenCLIP's (SDXL's second text encoder in the single file)
_OPEN_CLIP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_state_dict(text_encoder, prefix: str) -> dict:
    """A ``CLIPTextModelWithProjection``'s weights in OpenCLIP's layout under ``prefix`` (SDXL's
    ``conditioner.embedders.1.model.``): q/k/v stacked into ``in_proj``, the projection transposed."""
    sd = _text_model_keys(text_encoder)
    out = {
        "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
        "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    layers = text_encoder.config.num_hidden_layers
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for hf, oc in _OPEN_CLIP.items():
                out[f"{dst}{oc}.{kind}"] = sd.pop(f"{src}{hf}.{kind}")
    assert not sd, f"unconverted text encoder keys: {sorted(sd)}"
    return {prefix + k: v for k, v in out.items()}


def write_tiny_single_file(folder: Path, path: Path, markers=(), dtype: torch.dtype = torch.float32) -> Path:
    """A single-file checkpoint of a tiny diffusers folder (:func:`build_tiny_sd15`, :func:`build_tiny_sdxl`) in the
    original SD / ComfyUI key layout (UNet, VAE, the text encoder(s): SDXL's second in OpenCLIP's layout), stored in
    ``dtype``, with the marker keys ``markers`` (``v_pred``, ``ztsnr``) as ComfyUI's CheckpointSave writes them
    (empty float32 tensors). diffusers' ``from_single_file`` reads it back with the folder as its config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    tensors = {**ldm_unet_state_dict(unet), **ldm_vae_state_dict(vae)}
    text = _text_model_keys(CLIPTextModel.from_pretrained(folder / "text_encoder"))
    if (folder / "text_encoder_2").is_dir():
        tensors.update({"conditioner.embedders.0.transformer." + k: v for k, v in text.items()})
        text_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
        tensors.update(open_clip_state_dict(text_2, "conditioner.embedders.1.model."))
    else:
        tensors.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    tensors.update({m: torch.tensor([]) for m in markers})
    save_file(tensors, str(path))
    return Path(path)
