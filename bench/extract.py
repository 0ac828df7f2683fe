"""Benchmark FDI extraction: pairs per second (batch 1 vs batch 8) and peak memory of loading BLIP-2.

Not a test: prints one summary line per figure. Random weights (no download): the BLIP-2
architecture is built from a hand-written config, saved as a Hugging Face folder whose
``model.safetensors`` also holds a language model, then loaded through the real loader
(:meth:`fdi.encoder.QFormerEncoder.from_pretrained`) in a fresh process whose peak RSS is compared
with the bytes of the vision + Q-Former tensors (target ≤ 1.3×: the language model is never read).

By default it runs at reduced size on the CPU (ViT 4 layers wide 1408 — ViT-g's width — Q-Former
full size, a 1 GB stand-in language model); ``--full`` builds the real ViT-g (39 layers) + Q-Former
(1.1 B parameters) and a 2.7 B-parameter-sized language model stand-in (fp16, 5.4 GB on disk).

    python bench/extract.py                      # CPU, reduced size
    python bench/extract.py --full --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def blip2_config(full: bool):
    from transformers import Blip2Config

    vision = dict(
        hidden_size=1408,
        intermediate_size=6144,
        num_hidden_layers=39 if full else 4,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        qkv_bias=True,
    )
    qformer = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        cross_attention_frequency=2,
        encoder_hidden_size=1408,
        vocab_size=30522,
    )
    text = dict(
        model_type="opt",
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=64,
    )
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=32)


def build_checkpoint(folder: Path, full: bool) -> int:
    """Write a random BLIP-2 folder; return the bytes of its vision + query + Q-Former tensors."""
    from safetensors.torch import save_file
    from transformers import BlipImageProcessor
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2VisionModel

    cfg = blip2_config(full)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(folder)
    BlipImageProcessor().save_pretrained(folder)
    torch.manual_seed(0)
    tensors = {}
    tensors.update({f"vision_model.{k}": v for k, v in Blip2VisionModel(cfg.vision_config).state_dict().items()})
    tensors.update({f"qformer.{k}": v for k, v in Blip2QFormerModel(cfg.qformer_config).state_dict().items()})
    tensors["query_tokens"] = torch.randn(1, 32, 768) * 0.02
    wanted = sum(v.numel() * v.element_size() for v in tensors.values())
    # a language-model stand-in: as many bytes as OPT-2.7B in fp16 (full) or 1 GB, never to be read
    lm_bytes = int(5.4e9) if full else int(1e9)
    chunk = 50_000_000
    for i in range(lm_bytes // (2 * chunk)):
        tensors[f"language_model.model.decoder.layers.{i}.blob"] = torch.zeros(chunk, dtype=torch.float16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return wanted


def measure_load_rss(folder: Path) -> tuple:
    """Peak RSS growth (bytes) of a fresh Python: after loading, and after one encode.

    Peak RSS is read from ``/proc/self/status`` (``VmHWM``): ``getrusage``'s ``ru_maxrss`` would
    carry the parent's peak across ``exec``.

    safetensors may map the file lazily, so the figure that counts is the one after a forward pass,
    which has touched every weight of the vision model and the Q-Former.
    """
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n"
        "from fdi.encoder import QFormerEncoder\n"
        "import transformers.models.blip_2.modeling_blip_2\n"
        "base = hwm()\n"
        "enc = QFormerEncoder.from_pretrained(%r)\n"
        "loaded = hwm()\n"
        "enc.encode(torch.rand(1, 3, 224, 224))\n"
        "peak = hwm()\n"
        "print((loaded - base) * 1024, (peak - base) * 1024)\n"
    ) % (str(ROOT), str(folder))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, peak = out.stdout.strip().splitlines()[-1].split()
    return int(loaded), int(peak)


def pairs_per_second(encoder, batch: int, pairs: int, device: str) -> float:
    from fdi.extract import extract_fdi

    deg, clean = torch.rand(pairs, 3, 256, 256), torch.rand(pairs, 3, 256, 256)
    extract_fdi(encoder, deg[:batch], clean[:batch], batch_size=batch)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    extract_fdi(encoder, deg, clean, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return pairs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="real ViT-g size (1.1 B parameters) instead of reduced")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--pairs", type=int, default=8, help="pairs per timing")
    ap.add_argument("--workdir", default=None, help="where to write the random checkpoint (default: a temp dir)")
    args = ap.parse_args()
    from fdi.encoder import QFormerEncoder

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "blip2-random"
        wanted = build_checkpoint(folder, args.full)
        total = (folder / "model.safetensors").stat().st_size
        loaded, rss = measure_load_rss(folder)
        size = "full" if args.full else "reduced"
        print(
            f"extract.load_rss[{size}]: peak RSS growth of loading + one encode {rss / 1e9:.2f} "
            "GB / vision+Q-Former tensors "
            f"{wanted / 1e9:.2f} GB = {rss / wanted:.2f}x (target <= 1.3x; after loading "
            f"alone {loaded / 1e9:.2f} GB; "
            f"checkpoint file {total / 1e9:.2f} GB incl. language model)"
        )
        encoder = QFormerEncoder.from_pretrained(folder, device=args.device, vision_dtype=args.dtype)
        torch.set_grad_enabled(False)
        b1 = pairs_per_second(encoder, 1, args.pairs, args.device)
        b8 = pairs_per_second(encoder, 8, args.pairs, args.device)
        print(
            f"extract.throughput[{size},{args.device},{args.dtype}]: batch 1 {b1:.2f} "
            f"pairs/s, batch 8 {b8:.2f} pairs/s, "
            f"ratio {b8 / b1:.2f}x"
        )


if __name__ == "__main__":
    main()
