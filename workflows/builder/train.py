"""The training workflows: a style adapter from pairs, a dehazing adapter from clean photos, a deraining adapter
from a downloaded data set."""

from __future__ import annotations

from .blocks import image_in, sd_base
from .graph import Workflow
from .names import BLIP2_FOLDER, BLIP2_NOTE, COLORS, DATASETS, INPUT_IMAGES, MODEL_NOTE, PAIR_FOLDERS


def _qformer(wf: Workflow) -> None:
    wf.node("qformer", "FDIQFormerLoader", (0, 900), "Load BLIP-2 Q-Former", folder=BLIP2_FOLDER, dtype="auto")
    wf.group("BLIP-2 Q-Former", ["qformer"], COLORS["model"])


def _training(wf: Workflow, x: int, name: str) -> None:
    """'Train FDI Adapter' and 'Save FDI Adapter' (as ``name``) at column ``x``, in their group."""
    wf.node(
        "train",
        "FDITrainAdapter",
        (x, 400),
        "Train FDI Adapter",
        size=[340, 492],
        steps=200,
        learning_rate=1e-4,
        batch_size=1,
        resolution=512,
        seed=0,
        gradient_checkpointing=True,
        training_dtype="bf16",
        recon_weight=0.1,
    )
    wf.node(
        "save_adapter",
        "FDISaveAdapter",
        (x, 940),
        "Save FDI Adapter (models/fdi_adapters)",
        name=name,
        overwrite=False,
    )
    wf.group("Training", ["train", "save_adapter"], COLORS["guide"])


def _link_training(wf: Workflow, data: tuple) -> None:
    """The checkpoint's MODEL, CLIP and VAE and the extracted FDI into 'Train FDI Adapter', then ``data``: its
    training inputs as ``(source node, output, input)``."""
    for src, output, input_ in (("ckpt", "MODEL", "model"), ("ckpt", "CLIP", "clip"), ("ckpt", "VAE", "vae")):
        wf.link(src, output, "train", input_)
    wf.link("extract", "fdi", "train", "fdi")
    for src, output, input_ in data:
        wf.link(src, output, "train", input_)


def _restore(wf: Workflow, x: int, y: int, title: str) -> None:
    """'FDI Restore' for the adapter being trained and the extracted FDI (linked by :func:`_link_restore`)."""
    wf.node(
        "restore",
        "FDIRestore",
        (x, y),
        title,
        size=[320, 378],
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
    )


def _link_restore(wf: Workflow, image: tuple) -> None:
    """The checkpoint, ``image`` (node, output), the new adapter, the prompt and the FDI into 'FDI Restore'."""
    wf.link("ckpt", "MODEL", "restore", "model")
    wf.link("ckpt", "VAE", "restore", "vae")
    wf.link(image[0], image[1], "restore", "image")
    wf.link("train", "adapter", "restore", "adapter")
    wf.link("positive", "CONDITIONING", "restore", "positive")
    wf.link("extract", "fdi", "restore", "fdi")


def train_style_adapter() -> Workflow:
    wf = Workflow("train_style_adapter")
    a, b = PAIR_FOLDERS["train_style_adapter"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Train a style adapter in the graph, save it, and use it at once. 'Train FDI Adapter' trains on the loaded "
        "checkpoint's MODEL and VAE (frozen) with the style FDI of the same pairs; "
        "the loss curve shows how it went. "
        "Cancel during training keeps the adapter of the last finished step. Then 'Save FDI Adapter' writes "
        "models/fdi_adapters/my_style.safetensors (FDI embedded; 'Load FDI Adapter' lists it) and 'FDI Restore' "
        "stylises the photo with the new adapter.\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + "Pairs (10–50 are enough for a style; 'FDI Pair Stability' shows whether "
        f"yours are): photos in ComfyUI/input/{a}/, "
        f"the same scenes in the target style in ComfyUI/input/{b}/ (matched by file name; sizes may differ). "
        f"Input: the photo to stylise in ComfyUI/input ('{INPUT_IMAGES['train_style_adapter']}' here).",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    _qformer(wf)
    wf.node(
        "extract",
        "FDIExtractFromFolders",
        (400, 400),
        "Extract FDI (style A → style B)",
        size=[340, 206],
        degraded_folder=a,
        clean_folder=b,
        label="my_style",
        batch_size=8,
        keep_pairs=True,
    )
    wf.node(
        "pairs", "FDILoadPairs", (400, 650), "Load training pairs", size=[340, 82], degraded_folder=a, clean_folder=b
    )
    wf.node("stability", "FDIPairStability", (400, 780), "FDI Pair Stability", resamples=50, seed=0)
    wf.group("Style pairs and their FDI", ["extract", "pairs", "stability"], COLORS["fdi"])
    _training(wf, 800, "my_style")
    image_in(wf, "image", 1200, 900, INPUT_IMAGES["train_style_adapter"], "Photo to stylise")
    _restore(wf, 1560, 900, "FDI Restore (new style adapter)")
    wf.node(
        "save", "SaveImage", (1960, 900), "Stylised image", size=[340, 380], filename_prefix="fdi/train_style_adapter"
    )
    wf.node("curve", "PreviewImage", (1200, 400), "Loss curve", size=[420, 380])
    wf.node("stab_view", "PreviewImage", (1640, 400), "Pair stability", size=[420, 380])
    wf.link("qformer", "qformer", "extract", "qformer")
    _link_training(wf, (("pairs", "pairs", "pairs"),))
    wf.link("extract", "fdi", "stability", "fdi")
    wf.link("train", "adapter", "save_adapter", "adapter")
    wf.link("train", "loss_curve", "curve", "images")
    wf.link("stability", "plot", "stab_view", "images")
    _link_restore(wf, ("image", "IMAGE"))
    wf.link("restore", "image", "save", "images")
    wf.group("Restore-style sampling with the new adapter", ["image", "restore"], COLORS["sample"])
    wf.group("Loss curve and pair stability", ["curve", "stab_view"], COLORS["output"])
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def _degraded_pairs(wf: Workflow) -> None:
    """A clean photo → 'FDI Degrade Pairs' (synthetic haze) → 'Extract FDI' of the pairs."""
    image_in(wf, "photo", 400, 400, INPUT_IMAGES["train_from_clean_photos"], "Clean photo")
    wf.node(
        "degrade",
        "FDIDegradePairs",
        (400, 800),
        "FDI Degrade Pairs (synthetic haze)",
        size=[340, 160],
        degradation="haze",
        seed=0,
        copies=4,
    )
    wf.link("photo", "IMAGE", "degrade", "images")
    wf.group("Pairs from a clean photo", ["photo", "degrade"], COLORS["input"])
    wf.node(
        "extract",
        "FDIExtract",
        (800, 400),
        "Extract FDI (hazy → clean)",
        size=[340, 206],
        label="my_dehaze",
        batch_size=8,
        keep_pairs=True,
    )
    wf.link("qformer", "qformer", "extract", "qformer")
    wf.link("degrade", "degraded", "extract", "degraded")
    wf.link("degrade", "clean", "extract", "clean")
    wf.group("Task FDI", ["extract"], COLORS["fdi"])


def train_from_clean_photos() -> Workflow:
    wf = Workflow("train_from_clean_photos")
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Train a dehazing adapter from clean photos alone: 'FDI Degrade Pairs' makes (hazy, clean) pairs with "
        "synthetic haze (atmospheric scattering; other effects: rain, noise, poisson, jpeg, lowlight, "
        "motion_blur, defocus, or sums such as 'haze,noise'), 'Extract FDI' makes the task FDI from them, "
        "'Train FDI Adapter' trains on them, 'Save FDI Adapter' writes models/fdi_adapters/my_dehaze.safetensors "
        "and 'FDI Restore' tries the new adapter on the hazy images. Training draws its noise levels in the "
        "guidance window the adapter is trained for (timestep_sampling 'window', the paper's first third: right "
        "for haze); for noise set guidance_start 0.667 and guidance_end 1, the last third (measured on the small "
        "world: the first third costs a denoiser 2 dB, the last third does not).\n\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + f"Input: a clean photo in ComfyUI/input ('{INPUT_IMAGES['train_from_clean_photos']}' here); 'copies' "
        "makes several degraded versions of it. For a folder of photos use 'python -m fdi degrade --clean DIR "
        "--kind haze -o PAIRS' and 'Load FDI Training Pairs'.",
        title="Read me: model files",
    )
    sd_base(wf, 0, 400)
    _qformer(wf)
    _degraded_pairs(wf)
    _training(wf, 1200, "my_dehaze")
    _link_training(wf, (("degrade", "degraded", "degraded"), ("degrade", "clean", "clean")))
    wf.link("train", "adapter", "save_adapter", "adapter")
    wf.node("pairs_view", "PreviewImage", (1600, 400), "Hazy pairs", size=[420, 380])
    wf.node("curve", "PreviewImage", (2060, 400), "Loss curve", size=[420, 380])
    wf.link("degrade", "degraded", "pairs_view", "images")
    wf.link("train", "loss_curve", "curve", "images")
    wf.group("Pairs and loss curve", ["pairs_view", "curve"], COLORS["output"])
    _restore(wf, 1600, 900, "FDI Restore (new dehazing adapter)")
    _link_restore(wf, ("degrade", "degraded"))
    wf.group("Try the new adapter on the hazy images", ["restore"], COLORS["sample"])
    wf.node(
        "save",
        "SaveImage",
        (2000, 900),
        "Dehazed images",
        size=[340, 380],
        filename_prefix="fdi/train_from_clean_photos",
    )
    wf.link("restore", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf


def _dataset_note(dataset: str, folder: str) -> str:
    """Where the Rain100H download goes inside ComfyUI/input, and how much of it the graph loads."""
    return (
        f"Data set: Rain100H (Yang et al. 2017), unpacked as downloaded inside ComfyUI/input/{folder}/. The 2017 "
        f"release (the one the paper's 1800 training pairs belong to) gives ComfyUI/input/{folder}/"
        "rain_data_train_Heavy/ holding rain-N.png beside norain-N.png (its rainregion-N and rainstreak-N side maps "
        f"are skipped); the 2018 release gives ComfyUI/input/{folder}/rain_data_train_Heavy/rain/X2/norain-Nx2.png "
        "with …/norain/norain-N.png; PReNet's RainTrainH/ is read too. The node looks up to four folders deep, "
        f"so ComfyUI/input/{folder}/rain100h/rain_data_train_Heavy/ works as well. 'dataset' picks another set and "
        "'split' its train or test pairs: 'python -m fdi datasets list' and docs/datasets.md give each set's layout. "
        "max_pairs 200 loads 200 pairs spread over the split (about 0.75 GB of memory for Rain100H); 0 loads all "
        "1800 (about 7 GB). The release found, the pair count and any warning (e.g. a count unlike the paper's) "
        "are in the node's summary output and the console.\n"
    )


def train_from_dataset() -> Workflow:
    wf = Workflow("train_from_dataset")
    dataset, folder = DATASETS["train_from_dataset"]
    wf.note(
        "note",
        (0, 0),
        (700, 300),
        "Train a deraining adapter from a downloaded data set: 'Load Data Set Pairs (FDI)' reads Rain100H's "
        "training pairs as the download unpacks (paired by the set's own name rule), 'Extract FDI (pairs)' makes "
        "the task FDI from them, 'Train FDI Adapter' trains on the same pairs, 'Save FDI Adapter' writes "
        "models/fdi_adapters/my_derain.safetensors (FDI embedded) and 'FDI Restore' tries the new adapter on a "
        "rainy photo. The whole protocol of the paper (test set restored and scored) is the command line's "
        f"'python -m fdi reproduce --task rainstreak --dataset {dataset} --data DIR' (docs/reproduce.md).\n\n"
        + _dataset_note(dataset, folder)
        + "\n"
        + MODEL_NOTE
        + BLIP2_NOTE
        + f"Input: a rainy photo in ComfyUI/input ('{INPUT_IMAGES['train_from_dataset']}' here).",
        title="Read me: data set and model files",
    )
    sd_base(wf, 0, 400)
    _qformer(wf)
    wf.node(
        "dataset",
        "FDIDatasetPairs",
        (400, 400),
        "Load Data Set Pairs (Rain100H train)",
        size=[340, 210],
        dataset=dataset,
        folder=folder,
        split="train",
        task="",
        max_pairs=200,
        seed=0,
    )
    wf.node(
        "extract",
        "FDIExtractPairs",
        (400, 680),
        "Extract FDI (rainy → clean)",
        size=[340, 140],
        label="my_derain",
        batch_size=8,
        keep_pairs=True,
    )
    wf.link("qformer", "qformer", "extract", "qformer")
    wf.link("dataset", "pairs", "extract", "pairs")
    wf.group("Data set pairs and their FDI", ["dataset", "extract"], COLORS["fdi"])
    _training(wf, 800, "my_derain")
    _link_training(wf, (("dataset", "pairs", "pairs"),))
    wf.link("train", "adapter", "save_adapter", "adapter")
    wf.node("curve", "PreviewImage", (1200, 400), "Loss curve", size=[420, 380])
    wf.link("train", "loss_curve", "curve", "images")
    wf.group("Loss curve", ["curve"], COLORS["output"])
    image_in(wf, "image", 1200, 900, INPUT_IMAGES["train_from_dataset"], "Rainy photo")
    _restore(wf, 1560, 900, "FDI Restore (new deraining adapter)")
    _link_restore(wf, ("image", "IMAGE"))
    wf.group("Try the new adapter on a rainy photo", ["image", "restore"], COLORS["sample"])
    wf.node(
        "save", "SaveImage", (1960, 900), "Derained image", size=[340, 380], filename_prefix="fdi/train_from_dataset"
    )
    wf.link("restore", "image", "save", "images")
    wf.group("Output", ["save"], COLORS["output"])
    return wf
