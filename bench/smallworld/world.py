"""A small world trained here from scratch: patches of scikit-image's photos, a tiny KL VAE and a tiny SD 2.x UNet.

Nothing is downloaded. The photos are the colour and grey sample images that ship inside scikit-image
(``skimage/data``); two (``chelsea``, ``coffee``) are held out entirely for testing. Everything is
cached under the cache folder given to :func:`build_world` and reused when its recipe matches; the VAE is cached
on its own (``vae-<key>``), so worlds that differ only in the UNet share it. :data:`WORLDS` names the recipes
``bench/learns.py --world`` runs.

* **Patches**: every photo is resized so its shorter side is :attr:`WorldConfig.short_side`, then cut into
  ``patch``-pixel squares on a grid of stride ``patch // 2`` (train) or ``patch`` (test).
* **VAE** (diffusers ``AutoencoderKL``, SD's block types without the mid-block attention, latent = image / 8
  with ``latent_channels`` = 48, not SD's 4: a 4- or 16-channel latent, trained for minutes, reconstructed
  held-out patches at 14–16 dB; see docs/design.md): trained on random ``vae_crop``-pixel crops of the
  train patches (it is fully convolutional) on the posterior mode (what restore and train encode) with
  MSE + 0.1 L1 and a tiny penalty on the latent's size; its ``scaling_factor`` is set to
  ``1 / std`` of the training latents, as SD's 0.18215 was chosen.
* **UNet** (diffusers ``UNet2DConditionModel`` with SD 2.x's block layout: three ``CrossAttnDownBlock2D`` and a
  ``DownBlock2D``, mirrored up blocks, linear-projection transformers, ``unet_layers`` layers a level), ε- or
  v-prediction (``prediction_type``, as SD 2.1-base and SD 2.1) on SD 2.1's scaled-linear schedule, trained on
  the VAE latents (modes) of the train patches and their mirror images with the empty prompt of a frozen random
  CLIP text tower (SD 2's tokenizer).
* **BLIP-2**: a tiny ``Blip2ForConditionalGeneration`` with random weights (no BLIP-2 weights reach
  this machine): the Q-Former is a fixed random feature map of the image, so FDIs are differences of
  random features — the adapter has to learn what in them tells the degradation.

The folders it writes are what the project's commands read: ``sd/`` (a diffusers
``StableDiffusionPipeline``, safetensors) and ``blip2/`` (a Hugging Face BLIP-2 folder).

**Reproducible from nothing, on one machine.** Every draw is seeded (weights, batches, crops, timesteps, noise)
and the CPU kernels are deterministic at a fixed thread count, so a rebuild gives the same bits — but the order of
a float sum, hence every weight and through training every figure, depends on the thread count and the kernels:
the reduced VAE (800 steps) reconstructs its 8 held-out patches at 22.543 dB built in one thread, 21.805 dB in two,
20.914 dB in one with AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, another CPU's; its train
patches at 21.40, 21.35, 21.03 dB): a rounding difference grows into a world about 1.6 dB apart held out.
So the world is trained in :data:`BUILD_THREADS` (1) threads whoever calls (``bench/learns.py --threads`` only
sets its ``fdi`` commands'); a 1-thread build is what ``bench/learns.py`` always built, so the cache keys did not
change. Not pinned: the CPU's kernel set (AVX-512 here) and the torch/diffusers/transformers/scikit-image/numpy
versions; ``world.json`` (``built_with``) records them and a reuse that differs says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_IMAGES = (
    "astronaut",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "grass",
    "gravel",
    "brick",
    "coins",
)
TEST_IMAGES = ("chelsea", "coffee")


@dataclass(frozen=True)
class WorldConfig:
    """The recipe of the world (its hash names the cache folder)."""

    patch: int = 64
    short_side: int = 320
    vae_channels: Tuple[int, ...] = (32, 32, 32, 32)
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_crop: int = 32
    latent_channels: int = 48
    vae_lr: float = 3e-3
    unet_channels: Tuple[int, ...] = (32, 32, 64, 64)
    unet_steps: int = 800
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_layers: int = 2
    text_width: int = 32
    test_patches: int = 16
    seed: int = 0
    version: int = 2
    prediction_type: str = "epsilon"

    def key(self) -> str:
        """The hash of the recipe; a field added after v3 counts only when set, so older worlds keep their names."""
        recipe = {k: v for k, v in asdict(self).items() if _ADDED_LATER.get(k, object()) != v}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]

    def vae_key(self) -> str:
        """The hash of what the VAE depends on: worlds that differ only in their UNet share one VAE."""
        recipe = {k: v for k, v in asdict(self).items() if k in _VAE_FIELDS}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


#: recipe fields added after v3, with the value every world had before them
_ADDED_LATER = {"unet_layers": 2, "prediction_type": "epsilon"}
_VAE_FIELDS = ("patch", "short_side", "vae_channels", "vae_steps", "vae_batch", "vae_crop", "latent_channels")
_VAE_FIELDS += ("vae_lr", "seed")


#: the named recipes ``bench/learns.py --world`` picks from (docs/design.md, "The small world", says why each)
WORLDS: Dict[str, WorldConfig] = {
    "eps-v2": WorldConfig(),
    "eps-v3": WorldConfig(unet_channels=(64, 64, 128, 128), unet_lr=2e-3, version=3),
    "v-v4": WorldConfig(unet_channels=(64, 64, 128, 128), unet_lr=2e-3, version=4, prediction_type="v_prediction"),
    "v-v5": WorldConfig(
        unet_channels=(64, 64, 128, 128), unet_lr=2e-3, unet_layers=1, version=5, prediction_type="v_prediction"
    ),
}
WORLDS["v-v5-long"] = replace(WORLDS["v-v5"], unet_steps=1600)


def _log(msg: str) -> None:
    print(f"[world {time.strftime('%H:%M:%S')}] {msg}", flush=True)


#: CPU threads every world is trained in, whoever calls: the order of a float sum, so every weight and through
#: training every figure, depends on the thread count (measured: docs/design.md, "The small world")
BUILD_THREADS = 1


@contextmanager
def build_threads(n: int = BUILD_THREADS) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def provenance() -> Dict[str, object]:
    """What besides the recipe decides a world's bits: the thread count, the CPU's kernel set and the libraries.
    The same recipe gives the same weights when all of these match (measured; docs/design.md)."""
    import diffusers
    import skimage
    import transformers

    return {
        "build_threads": BUILD_THREADS,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "scikit_image": skimage.__version__,
        "numpy": np.__version__,
    }


def _check_provenance(what: str, recorded: Dict[str, object]) -> None:
    """Say (not fail) when a cached part was built where a rebuild would give other bits."""
    here = provenance()
    if not recorded:
        _log(f"{what} records no build provenance (built before it was recorded); a rebuild may differ")
        return
    diff = {k: (recorded.get(k), v) for k, v in here.items() if recorded.get(k) != v}
    if diff:
        _log(f"{what} was built with " + ", ".join(f"{k} {a} (here {b})" for k, (a, b) in diff.items())
             + "; a rebuild here gives other weights and figures")  # fmt: skip


# ------------------------------------------------------------------------------------------------ patches
def _load_photo(name: str) -> torch.Tensor:
    import skimage.data

    arr = np.asarray(
        skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
    )
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / arr.max() * 255).astype(np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _resize_short(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    s = short / min(h, w)
    size = (max(short, round(h * s)), max(short, round(w * s)))
    return F.interpolate(img[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def _grid(img: torch.Tensor, patch: int, stride: int) -> List[torch.Tensor]:
    h, w = img.shape[-2:]
    return [
        img[:, y : y + patch, x : x + patch]
        for y in range(0, h - patch + 1, stride)
        for x in range(0, w - patch + 1, stride)
    ]


def make_patches(cfg: WorldConfig, folder: Path) -> Tuple[Path, Path]:
    """Write ``train/*.png`` and ``test/*.png`` patches; returns the two folders."""
    from fdi.images import save_image

    train_dir, test_dir = folder / "train", folder / "test"
    if (folder / "done").exists():
        return train_dir, test_dir
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_IMAGES:
        img = _resize_short(_load_photo(name), cfg.short_side)
        for i, p in enumerate(_grid(img, cfg.patch, cfg.patch // 2)):
            save_image(p, train_dir / f"{name}_{i:03d}.png")
    per_image = cfg.test_patches // len(TEST_IMAGES)
    for name in TEST_IMAGES:
        img = _resize_short(_load_photo(name), cfg.short_side)
        patches = _grid(img, cfg.patch, cfg.patch)
        idx = np.linspace(0, len(patches) - 1, per_image).round().astype(int)
        for j, i in enumerate(idx):
            save_image(patches[i], test_dir / f"{name}_{j:02d}.png")
    (folder / "done").write_text("ok\n")
    return train_dir, test_dir


def _load_folder(folder: Path) -> torch.Tensor:
    from fdi.images import list_images, load_image

    return torch.stack([load_image(p) for p in list_images(folder)])


# ------------------------------------------------------------------------------------------------ models
def _vae(cfg: WorldConfig):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=16,
        sample_size=cfg.patch,
        scaling_factor=0.18215,
        mid_block_add_attention=False,
    )


def _unet(cfg: WorldConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.patch // 8,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers,
        norm_num_groups=16,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=tuple(max(1, c // 32) for c in cfg.unet_channels),
        use_linear_projection=True,
    )


def _text_encoder(cfg: WorldConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=2 * cfg.text_width,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=int(tokenizer.model_max_length),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()


def _scheduler(prediction_type: str = "epsilon"):
    """SD 2.1's DDIM configuration (scaled-linear betas 0.00085..0.012, 1000 steps), ε (2.1-base) or v (2.1)."""
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


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random dihedral transform (flips and 90° turns) per batch."""
    k = int(torch.randint(0, 4, (), generator=g))
    x = torch.rot90(x, k, dims=(-2, -1))
    if bool(torch.randint(0, 2, (), generator=g)):
        x = x.flip(-1)
    return x


def train_vae(cfg: WorldConfig, train: torch.Tensor):
    """Train the VAE on ``train`` ``[N, 3, P, P]`` in 0..1 in :data:`BUILD_THREADS` threads; returns it (eval)."""
    with build_threads():
        return _train_vae(cfg, train)


def _train_vae(cfg: WorldConfig, train: torch.Tensor):
    torch.manual_seed(cfg.seed)
    vae = _vae(cfg).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.vae_lr, total_steps=cfg.vae_steps, pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    for step in range(cfg.vae_steps):
        idx = torch.randint(0, len(train), (cfg.vae_batch,), generator=g)
        y, x0 = (int(v) for v in torch.randint(0, cfg.patch - cfg.vae_crop + 1, (2,), generator=g))
        crop = train[idx][:, :, y : y + cfg.vae_crop, x0 : x0 + cfg.vae_crop]  # fully convolutional: crops suffice
        x = _augment(crop, g) * 2 - 1
        z = vae.encode(x).latent_dist.mean  # the mode: what restore and train encode (docs/design.md)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.1 * (rec - x).abs().mean() + 1e-6 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == cfg.vae_steps - 1:
            psnr = -10 * math.log10(F.mse_loss((rec + 1) / 2, (x + 1) / 2).item() + 1e-12)
            _log(
                f"vae step {step}/{cfg.vae_steps} loss {loss.item():.4f} crop-psnr {psnr:.2f} ({time.time() - t0:.0f}s)"
            )
    return vae.eval()


@torch.no_grad()
def _recon_psnr(vae, images: torch.Tensor) -> float:
    """PSNR (dB) of the VAE's reconstruction (posterior mode) of ``images`` ``[N, 3, P, P]``."""
    rec = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample.clamp(-1, 1)
    return -10 * math.log10(F.mse_loss((rec + 1) / 2, images).item())


@torch.no_grad()
def _latents(vae, images: torch.Tensor, batch: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(cfg: WorldConfig, vae, train: torch.Tensor, context: torch.Tensor):
    """Train the UNet (``cfg.prediction_type``: ε or v) on the VAE latents of ``train`` and its mirror images, in
    :data:`BUILD_THREADS` threads; returns ``(unet, scale)``."""
    with build_threads():
        return _train_unet(cfg, vae, train, context)


def _train_unet(cfg: WorldConfig, vae, train: torch.Tensor, context: torch.Tensor):
    from fdi.sampling import diffusion_target

    torch.manual_seed(cfg.seed + 1)
    views = torch.cat([train, train.flip(-1)])
    mean, std = _latents(vae, views)
    scale = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scale)
    unet = _unet(cfg).train()
    sch = _scheduler(cfg.prediction_type)
    abar = sch.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    lr_s = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.unet_lr, total_steps=cfg.unet_steps, pct_start=0.05)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    t0 = time.time()
    ema = None
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(mean), (cfg.unet_batch,), generator=g)
        z0 = mean[idx] * scale  # the posterior mode, as restore encodes
        t = torch.randint(0, sch.config.num_train_timesteps, (cfg.unet_batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = unet(zt, t, encoder_hidden_states=context.expand(cfg.unet_batch, -1, -1)).sample
        target = diffusion_target(z0, eps, a, cfg.prediction_type)
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_s.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 500 == 0 or step == cfg.unet_steps - 1:
            _log(f"unet step {step}/{cfg.unet_steps} loss(ema) {ema:.4f} ({time.time() - t0:.0f} s)")
    return unet.eval(), scale


def _blip2(folder: Path, seed: int) -> None:
    """A tiny random BLIP-2 (ViT 2 layers, Q-Former 2 layers, 8 query tokens of width 32) saved to ``folder``."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(seed)
    config = Blip2Config(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
            initializer_range=0.2,
        ),
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            cross_attention_frequency=1,
            vocab_size=99,
            max_position_embeddings=64,
            initializer_range=0.2,
            encoder_hidden_size=64,
        ),
        text_config=dict(
            model_type="opt",
            vocab_size=99,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            ffn_dim=32,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
        ),
        num_query_tokens=8,
    )
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    BlipImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)


def cached_vae(cfg: WorldConfig, train: torch.Tensor, cache: Path):
    """``(vae, seconds it took to train)``: trained by :func:`train_vae`, or read from ``cache/vae-<vae key>``."""
    from diffusers import AutoencoderKL

    folder = cache / f"vae-{cfg.vae_key()}"
    if (folder / "train.json").exists():
        _log(f"vae from {folder}")
        record = json.loads((folder / "train.json").read_text())
        _check_provenance(f"the cached VAE {folder.name}", record.get("built_with", {}))
        return AutoencoderKL.from_pretrained(folder).eval(), record["s"]
    t0 = time.time()
    vae = train_vae(cfg, train)
    seconds = round(time.time() - t0, 1)
    vae.save_pretrained(folder, safe_serialization=True)
    (folder / "train.json").write_text(json.dumps({"s": seconds, "built_with": provenance()}))
    return vae, seconds


def _train_models(cfg: WorldConfig, cache: Path, train_dir: Path, test_dir: Path, sd_dir: Path) -> Dict:
    """Train (or read) the VAE, train the UNet, save the SD pipeline to ``sd_dir``; returns the world's facts."""
    from diffusers import StableDiffusionPipeline

    from fdi.tokenizers import sd2_tokenizer

    train = _load_folder(train_dir)
    test = _load_folder(test_dir)
    _log(f"{len(train)} train patches, {len(test)} test patches of {cfg.patch} px")
    vae, t_vae = cached_vae(cfg, train, Path(cache))
    vae_psnr = _recon_psnr(vae, test)
    vae_train_psnr = _recon_psnr(vae, train[:: max(1, len(train) // 64)])
    _log(f"vae reconstruction PSNR: held-out {vae_psnr:.2f} dB, train {vae_train_psnr:.2f} dB")
    tok = sd2_tokenizer()
    torch.manual_seed(cfg.seed + 3)
    text = _text_encoder(cfg, tok)
    with torch.no_grad():
        ids = tok("", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        context = text(ids)[0]
    t1 = time.time()
    unet, scale = train_unet(cfg, vae, train, context)
    t_unet = time.time() - t1
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=_scheduler(cfg.prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(sd_dir, safe_serialization=True)
    return {
        "train_patches": len(train),
        "test_patches": len(test),
        "vae_heldout_psnr": round(vae_psnr, 3),
        "vae_train_psnr": round(vae_train_psnr, 3),
        "vae_scaling_factor": scale,
        "vae_train_s": round(t_vae, 1),
        "unet_train_s": round(t_unet, 1),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "built_with": provenance(),
    }


def build_world(cfg: WorldConfig, cache: Path) -> Dict[str, Path]:
    """Build (or reuse) the world under ``cache/world-<key>``; returns its folders and facts. Everything is trained
    in :data:`BUILD_THREADS` threads, so a rebuild from nothing on the same machine gives the same bits
    (``info["built_with"]``: what else must match)."""
    root = Path(cache) / f"world-{cfg.key()}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    train_dir, test_dir = make_patches(cfg, root / "patches")
    sd_dir, blip_dir = root / "sd", root / "blip2"
    info_path = root / "world.json"
    if not (sd_dir / "model_index.json").exists() or not info_path.exists():
        with build_threads():
            info = _train_models(cfg, cache, train_dir, test_dir, sd_dir)
        info_path.write_text(json.dumps(info, indent=2))
    else:
        _check_provenance(f"the cached world {root.name}", json.loads(info_path.read_text()).get("built_with", {}))
    if not (blip_dir / "config.json").exists():
        with build_threads():
            _blip2(blip_dir, cfg.seed + 4)
    info = json.loads(info_path.read_text())
    return {"root": root, "train": train_dir, "test": test_dir, "sd": sd_dir, "blip2": blip_dir, "info": info}
