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
