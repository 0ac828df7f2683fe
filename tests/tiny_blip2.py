"""Tiny random BLIP-2 checkpoints for tests, written with transformers' own ``save_pretrained``.

The architecture is BLIP-2's (ViT + Q-Former + OPT), only narrow and shallow, so the real loading
code (config, preprocessor config, safetensors, shards) is exercised without any download.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_IMAGE_SIZE = 32
TINY_TOKENS = 8
TINY_WIDTH = 32


def tiny_blip2_config():
    from transformers import Blip2Config

    # transformers initialises BLIP-2's vision tower with std 1e-10: its features would be ~1e-9 and the Q-Former
    # output would not depend on the image at all. An image-sensitive init makes the parity tests able to fail.
    return Blip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=TINY_IMAGE_SIZE,
            patch_size=4,
            initializer_range=0.2,
        ),
        qformer_config=dict(
            hidden_size=TINY_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            cross_attention_frequency=1,
            vocab_size=99,
            max_position_embeddings=64,
            initializer_range=0.2,
            encoder_hidden_size=32,
        ),
        text_config=dict(
            model_type="opt",
            vocab_size=99,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=32,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
        ),
        num_query_tokens=TINY_TOKENS,
    )


def build_tiny_blip2(folder: Path, seed: int = 0, max_shard_size=None):
    """Save a random tiny ``Blip2ForConditionalGeneration`` and its image processor to ``folder``.

    Returns the model (eval mode, float32) so that tests can compare against transformers.
    """
    from transformers import Blip2ForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(tiny_blip2_config()).eval()
    with torch.no_grad():  # query tokens start at zero in transformers' init; make them informative
        model.query_tokens.normal_(0, 0.5)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(folder)
    return model


def shard_tiny_blip2(src: Path, dst: Path) -> list:
    """Copy the folder ``src`` to ``dst`` with its weights in three shards and an index, as large checkpoints ship.

    Shard 1 holds the vision model, shard 2 the query tokens and Q-Former, shard 3 the language model.
    Returns the three shard paths.
    """
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    vision = {k: v for k, v in tensors.items() if k.startswith("vision_model.")}
    qformer = {k: v for k, v in tensors.items() if k.startswith("qformer.") or k == "query_tokens"}
    rest = {k: v for k, v in tensors.items() if k not in vision and k not in qformer}
    paths, weight_map = [], {}
    for i, part in enumerate((vision, qformer, rest), start=1):
        name = f"model-0000{i}-of-00003.safetensors"
        save_file(part, dst / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
        paths.append(dst / name)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return paths


def build_tiny_other_layout(folder: Path, kind: str, seed: int = 0) -> Path:
    """A tiny random checkpoint of a model that is *not* BLIP-2, saved by transformers: ``kind`` is
    ``"instructblip"`` (same vision model and query tokens, a Q-Former that also reads the instruction text) or
    ``"blip"`` (BLIP-1: a vision model and a text decoder, no Q-Former)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(seed)
    base = tiny_blip2_config().to_dict()
    if kind == "instructblip":
        from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

        cfg = InstructBlipConfig(
            vision_config=base["vision_config"],
            qformer_config=base["qformer_config"],
            text_config=base["text_config"],
            num_query_tokens=TINY_TOKENS,
        )
        model = InstructBlipForConditionalGeneration(cfg)
    elif kind == "blip":
        text = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        model = BlipForConditionalGeneration(BlipConfig(vision_config=base["vision_config"], text_config=text))
    else:
        raise ValueError(f"unknown layout {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(folder)
    return folder
