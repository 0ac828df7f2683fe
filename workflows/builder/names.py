"""The files the workflows name (models, adapters, FDIs, input images), the notes that say where they go, colours."""

from __future__ import annotations

from fdi.sources import source

SD21 = source("sd2.1-base")
SDXL = source("sdxl")
BLIP2 = source("blip2")

CHECKPOINT = SD21.file
SDXL_CHECKPOINT = SDXL.file
#: the model files a user downloads, as the ComfyUI frontend's model entries (``{name, url, hash, hash_type,
#: directory}``, the ``ModelFile`` of its workflow schema; from :mod:`fdi.sources`): a loader node whose widget names
#: one of them carries it in ``properties.models`` and the workflow lists it in its top-level ``models``, so a
#: frontend that finds the file missing offers the download into that folder. BLIP-2 is a folder, not one file: its
#: note says where it comes from.
DOWNLOADS = {s.file: s.model_entry() for s in (SD21, SDXL)}
#: the checkpoint each workflow loads (the others: :data:`CHECKPOINT`)
WORKFLOW_CHECKPOINTS = {"restore_sdxl": SDXL_CHECKPOINT, "style_transfer_sdxl": SDXL_CHECKPOINT}
BLIP2_FOLDER = BLIP2.folder
ADAPTERS = {
    "derain": "fdi_derain.safetensors",
    "dehaze": "fdi_dehaze.safetensors",
    "desnow": "fdi_desnow.safetensors",
    "painting": "fdi_style_painting.safetensors",
    "vangogh": "fdi_style_vangogh.safetensors",
    "ukiyoe": "fdi_style_ukiyoe.safetensors",
    "sdxl_derain": "fdi_sdxl_derain.safetensors",
    "sdxl_painting": "fdi_sdxl_style_painting.safetensors",
}
#: the base family each adapter file is trained for (the others: SD 2.1 base)
ADAPTER_FAMILIES = {"sdxl_derain": "sdxl", "sdxl_painting": "sdxl"}
FDI_FILES = {"denoise": "denoise.fdi.safetensors", "desnow": "desnow.fdi.safetensors"}
#: degradation classifiers the workflows load (``python -m fdi classify train``); the tests make one whose labels are
#: the adapters' (the keys of :data:`ADAPTERS`)
CLASSIFIERS = {"mixed": "degradations.clf.safetensors"}
#: images the workflows load from ComfyUI's input folder (the tests put small images there)
INPUT_IMAGES = {
    "restore_single": "degraded.png",
    "restore_one_node": "degraded.png",
    "restore_large_photo": "large_photo.png",
    "cross_task_fdi": "snowy.png",
    "mixed_composite": "rain_haze.png",
    "mixed_progressive": "rain_haze.png",
    "restore_auto_mixed": "rain_haze.png",
    "style_transfer": "photo.png",
    "style_fusion": "photo.png",
    "train_style_adapter": "photo.png",
    "train_from_clean_photos": "clean_photo.png",
    "train_from_dataset": "degraded.png",
    "restore_sdxl": "degraded_1024.png",
    "style_transfer_sdxl": "photo_1024.png",
}
#: one reference pair loaded as images (build_fdi_from_pairs shows FDIExtract with them)
ONE_PAIR_IMAGES = ("pair_rainy.png", "pair_clean.png")
#: folders of reference pairs inside ComfyUI's input folder (degraded / style A, clean / style B)
PAIR_FOLDERS = {
    "build_fdi_from_pairs": ("fdi/rainy", "fdi/clean"),
    "style_transfer": ("style/photo", "style/painting"),
    "train_style_adapter": ("style/photo", "style/painting"),
    "style_transfer_sdxl": ("style/photo", "style/painting"),
}
#: data sets the workflows read ('Load Data Set Pairs (FDI)'): workflow -> (reader name, folder inside ComfyUI's
#: input folder where the download is unpacked; the tests make a miniature tree of the set there)
DATASETS = {"train_from_dataset": ("rain100h", "datasets")}

MODEL_NOTE = (
    "Model files (ComfyUI/models/…):\n"
    f"• {SD21.directory}/{CHECKPOINT}: {SD21.title}, the file as published in "
    f"{SD21.repo} on Hugging Face (any SD 2.x 512 checkpoint works); a frontend that "
    "finds it missing offers the download.\n"
)
ADAPTER_NOTE = (
    "• fdi_adapters/<name>.safetensors: FDI adapters made by 'python -m fdi train' (one per task or style). "
    "An adapter file may embed the FDI it was trained with: 'Load FDI Adapter' then gives it as its second output.\n"
)
BLIP2_NOTE = (
    f"• {BLIP2.directory}/{BLIP2_FOLDER}/: a BLIP-2 checkpoint folder in Hugging Face layout (config.json, "
    f"preprocessor_config.json, model*.safetensors), e.g. the files of {BLIP2.page} "
    "(a folder: the frontend does not download it). Only its vision model and Q-Former are read; the language "
    "model is never loaded.\n"
)
SDXL_MODEL_NOTE = (
    "Model files (ComfyUI/models/…):\n"
    f"• {SDXL.directory}/{SDXL_CHECKPOINT}: {SDXL.title}, the file as published in "
    f"{SDXL.repo} on Hugging Face (any SDXL checkpoint or fine-tune works; SD 1.5 and "
    "SD 2.x adapters do not: an adapter works on the base family it was trained for); a frontend that finds it "
    "missing offers the download.\n"
)
SDXL_ADAPTER_NOTE = (
    "• fdi_adapters/<name>.safetensors: an FDI adapter trained for SDXL (by 'Train FDI Adapter' on this "
    "checkpoint's MODEL, or 'python -m fdi train' with an SDXL base); it has three levels and embeds its FDI.\n"
)
SDXL_SIZE_NOTE = (
    "SDXL works at about 1024 px a side: 'FDI Restore' runs images up to 1024 px whole and larger ones in 1024 px "
    "tiles (tile_size 1024, 128 px overlap; 0 turns tiles off). The size conditioning is the image's own size.\n"
)
CLASSIFIER_NOTE = (
    "• fdi_classifiers/<name>.clf.safetensors: a degradation classifier made by 'python -m fdi classify train' with "
    "the same BLIP-2 (one label per degradation, e.g. --task derain=rainy/ --task dehaze=hazy/ --clean clean/). "
    "An adapter is picked when its label (set by 'python -m fdi train --label'; 'python -m fdi adapter-info' shows "
    "it) is a label the classifier detects.\n"
)
FDI_NOTE = "• fdi/<name>.fdi.safetensors: FDI files from 'Save FDI' or 'python -m fdi extract'.\n"
SAMPLING_NOTE = (
    "Sampling as in the paper: DDIM inversion of the image, then DDIM back (KSamplerAdvanced: sampler ddim, "
    "scheduler ddim_uniform, add_noise disable, the same steps as the inversion, cfg 1, empty prompt) with the "
    "FDI guidance on steps k < 0.333 x steps (end_percent 0.333: steps 0..16 of 50, the paper's first third). "
    "With a step count that divides 1000 (50 here) this graph gives the same pixels as 'FDI Restore' and "
    "'python -m fdi restore' on images whose sides are multiples of 64."
)

COLORS = {"model": "#3f789e", "input": "#8A8", "fdi": "#a1309b", "guide": "#b58b2a", "sample": "#88A", "output": "#444"}
