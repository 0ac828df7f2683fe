"""What every FDI node shares: ComfyUI types, folders, model management, progress.

This module is the translation layer between ComfyUI and :mod:`fdi` (the plain library): it turns
ComfyUI's ``IMAGE`` into the library's ``[B, 3, H, W]`` batches, resolves names picked in the UI
into files inside ComfyUI's folders (refusing anything that escapes them), wraps library modules in
``comfy.model_patcher.ModelPatcher`` so ComfyUI loads and offloads them like its own models, and
turns the library's progress callback into ``comfy.utils.ProgressBar`` + ComfyUI's interrupt.

Errors a user can fix are raised as :class:`fdi.errors.FDIError` with a one-line message: ComfyUI
reports any exception of a node as an execution error in the UI (and in ``/history``) and keeps
serving, and nothing has been written at that point (every writer of the library is atomic and
runs last).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from ..fdi.classifier import CLASSIFIER_SUFFIX
from ..fdi.dtypes import DTYPES, parse_dtype
from ..fdi.errors import FDIError
from ..fdi.instruction import FDI, FDI_SUFFIX

# ------------------------------------------------------------------------------------------------
# custom types (the type names are part of the contract: saved workflows refer to them)

Blip2QFormer = io.Custom("BLIP2_QFORMER")
FDIType = io.Custom("FDI")
FDIAdapterType = io.Custom("FDI_ADAPTER")
FDIGuidanceType = io.Custom("FDI_GUIDANCE")
FDIPairsType = io.Custom("FDI_PAIRS")
FDIClassifierType = io.Custom("FDI_CLASSIFIER")
FDIDegradationsType = io.Custom("FDI_DEGRADATIONS")

CATEGORY = "FDI"

#: the precision combo of the loaders: ``auto`` (see :func:`pick_dtype`) or a name of :data:`fdi.dtypes.DTYPES`
DTYPE_CHOICES = ["auto", *DTYPES]


# ------------------------------------------------------------------------------------------------
# images


def fraction_input(name: str, default: float, tooltip: str, optional: bool = False) -> io.Float.Input:
    """A FLOAT widget for a fraction of the sampling steps (0..1 in steps of 0.001): guidance windows."""
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.001, optional=optional, tooltip=tooltip)


def image_to_batch(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """ComfyUI ``IMAGE`` ``[B, H, W, C]`` in 0..1 → library batch ``[B, 3, H, W]`` float32.

    An alpha channel is dropped (as ``LoadImage`` does), a single channel is replicated.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise FDIError(f"{what} must be a ComfyUI IMAGE [B, H, W, C], got {getattr(image, 'shape', type(image))}")
    c = image.shape[-1]
    if c == 4:
        image = image[..., :3]
    elif c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c != 3:
        raise FDIError(f"{what} has {c} channels; connect an RGB IMAGE")
    return image.permute(0, 3, 1, 2).float().contiguous()


def batch_to_image(batch: torch.Tensor) -> torch.Tensor:
    """Library batch ``[B, 3, H, W]`` → ComfyUI ``IMAGE`` ``[B, H, W, 3]`` on the intermediate device."""
    return batch.permute(0, 2, 3, 1).float().clamp(0, 1).contiguous().to(mm.intermediate_device())


def plot_to_image(picture: np.ndarray) -> torch.Tensor:
    """A rendered plot (:mod:`fdi.plots`: ``[H, W, 3]`` uint8) → ComfyUI ``IMAGE`` ``[1, H, W, 3]`` in 0..1."""
    return batch_to_image(torch.from_numpy(np.ascontiguousarray(picture)).float().div(255.0)[None].permute(0, 3, 1, 2))


def check_fdi_input(fdi: object, name: str = "fdi") -> FDI:
    """``fdi`` if it is an :class:`fdi.instruction.FDI`, else :class:`FDIError` naming what is connected to ``name``."""
    if not isinstance(fdi, FDI):
        raise FDIError(f"the {name!r} input is a {type(fdi).__name__}, not an FDI; connect 'Extract FDI' or 'Load FDI'")
    return fdi


# ------------------------------------------------------------------------------------------------
# the MODEL's prediction

#: ComfyUI's ``model_sampling`` class names → the library's prediction types (:data:`fdi.sampling.PREDICTION_TYPES`)
COMFY_PREDICTIONS = {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}


def prediction_type(model) -> str:
    """The MODEL's prediction as the library names it (``epsilon``, ``v_prediction``, or ComfyUI's type name).

    Read from the MODEL's own ``model_sampling`` (what its sampler uses, a ``ModelSamplingDiscrete`` patch
    included): the class nearest in its MRO that defines ``calculate_denoised`` (ComfyUI's ``EPS``,
    ``V_PREDICTION``, ``EDM``, ``X0``, ``CONST``…). Without one, the base model's ``model_type``."""
    kind = ""
    get = getattr(model, "get_model_object", None)
    sampling = get("model_sampling") if callable(get) else None
    for cls in type(sampling).__mro__ if sampling is not None else ():
        if "calculate_denoised" in cls.__dict__:  # e.g. LCM(EPS) in comfy_extras is LCM, not epsilon
            kind = cls.__name__ if cls.__module__ == "comfy.model_sampling" else cls.__qualname__ + " (custom)"
            break
    if not kind:
        kind = getattr(getattr(getattr(model, "model", None), "model_type", None), "name", "")
    return COMFY_PREDICTIONS.get(kind, kind.lower() or "unknown")


# ------------------------------------------------------------------------------------------------
# folders


#: the suffix of a BLIP-2 packed into one file (``python -m fdi pack-blip2``)
BLIP2_FILE_SUFFIX = ".safetensors"


def blip2_choices() -> List[str]:
    """What ``models/blip2`` offers, under every ``blip2`` model path: checkpoint folders (sub-folders holding a
    ``config.json``) and ``.safetensors`` files (packed by ``python -m fdi pack-blip2``) outside them.

    Returned relative to their model path (``blip2-opt-2.7b``, ``salesforce/blip2-opt-2.7b``,
    ``blip2-opt-2.7b-fp16.safetensors``…), two folder levels deep at most, sorted. A checkpoint folder's own
    weight files and hidden files (a pack under way writes ``.NAME.tmp``) are not choices.
    """
    found = set()
    for base in folder_paths.get_folder_paths("blip2"):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            rel = os.path.relpath(root, base)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth >= 1 and "config.json" in files:
                found.add(rel.replace(os.sep, "/"))
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < 2 else []
            for f in files:
                if f.endswith(BLIP2_FILE_SUFFIX) and not f.startswith("."):
                    found.add(f if depth == 0 else f"{rel.replace(os.sep, '/')}/{f}")
    return sorted(found)


def blip2_path(name: str) -> str:
    """The full path of a BLIP-2 folder or packed file picked in the UI (must be one :func:`blip2_choices` lists)."""
    if name not in blip2_choices():
        raise FDIError(
            f"BLIP-2 {name!r} is not in models/blip2; put a checkpoint folder (Hugging Face layout) or a file made "
            "by python -m fdi pack-blip2 there and refresh"
        )
    for base in folder_paths.get_folder_paths("blip2"):
        p = os.path.join(base, *name.split("/"))
        if os.path.isfile(os.path.join(p, "config.json")) or (name.endswith(BLIP2_FILE_SUFFIX) and os.path.isfile(p)):
            return p
    raise FDIError(f"BLIP-2 {name!r} disappeared; refresh the node")


def fdi_files() -> List[str]:
    """``*.fdi.safetensors`` files in every ``fdi`` model path (relative names, sorted)."""
    return [f for f in folder_paths.get_filename_list("fdi") if f.endswith(FDI_SUFFIX)]


def adapter_files() -> List[str]:
    """``*.safetensors`` files in every ``fdi_adapters`` model path (relative names, sorted)."""
    return [f for f in folder_paths.get_filename_list("fdi_adapters") if f.endswith(".safetensors")]


def classifier_files() -> List[str]:
    """``*.clf.safetensors`` files in every ``fdi_classifiers`` model path (relative names, sorted)."""
    return [f for f in folder_paths.get_filename_list("fdi_classifiers") if f.endswith(CLASSIFIER_SUFFIX)]


def model_file(folder: str, name: str, what: str) -> str:
    """Full path of a file picked from a model-folder list, or a clear error."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FDIError(f"{what} {name!r} is not in models/{folder}; put it there and refresh the node")
    return path


def check_file_name(name: str, suffix: str, what: str, folder: str, example: str) -> str:
    """Validate a file name typed by a user; return it ending in ``suffix`` (a bare ``.safetensors`` is replaced).

    Refused: empty names, path separators (``/``, ``\\``), drive letters, ``..``, a leading dot (hidden file)
    and control characters. The file always lands directly in ``models/<folder>``."""
    raw = name
    name = (name or "").strip()
    if not name:
        raise FDIError(f"the {what} file name is empty; type a name such as {example!r}")
    if "/" in name or "\\" in name or ":" in name:
        raise FDIError(
            f"{what} file name {raw!r} is not a plain name (it contains a path separator or drive); "
            f"give e.g. {example!r}, the file is always saved in models/{folder}"
        )
    if ".." in name or name.startswith("."):
        raise FDIError(
            f"{what} file name {raw!r} is not a plain name (it contains '..' or starts with '.'); give e.g. {example!r}"
        )
    if any(ord(ch) < 32 for ch in name):
        raise FDIError(f"{what} file name {raw!r} contains control characters; give a plain name")
    if not name.endswith(suffix):
        name = name.removesuffix(".safetensors") + suffix
    return name


def save_folder(folder: str) -> str:
    """The folder a save node writes to: the first path of the ``folder`` model folder (``models/<folder>``)."""
    paths = folder_paths.get_folder_paths(folder)
    if not paths:
        raise FDIError(f"no {folder!r} model folder is registered; reinstall the FDI node pack")
    os.makedirs(paths[0], exist_ok=True)
    return paths[0]


def save_target(folder: str, name: str, suffix: str, what: str, example: str, overwrite: bool) -> tuple:
    """``(file name, full path)`` for a save node writing ``name`` into ``models/<folder>``, checked before any work
    (:func:`check_file_name`; an existing file without ``overwrite`` is an error)."""
    file_name = check_file_name(name, suffix, what, folder, example)
    path = os.path.join(save_folder(folder), file_name)
    if os.path.exists(path) and not overwrite:
        raise FDIError(f"models/{folder}/{file_name} already exists; choose another name or switch 'overwrite' on")
    return file_name, path


def saved(folder: str) -> None:
    """Forget ComfyUI's cached file list of ``folder``, so its loader lists a file just saved at once."""
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(folder, None)


def input_subfolder(name: str, what: str) -> str:
    """Resolve a folder typed by a user *inside ComfyUI's input folder*; refuse anything else.

    Refused: absolute paths (and drive letters), ``..`` components, and paths (symlinks included)
    whose real location is outside the input folder.
    """
    raw = name
    name = (name or "").strip()
    if not name:
        raise FDIError(f"the {what} is empty; give a folder inside ComfyUI's input folder, e.g. 'rain/degraded'")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise FDIError(f"the {what} {raw!r} is an absolute path; give a folder relative to ComfyUI's input folder")
    if ".." in parts:
        raise FDIError(f"the {what} {raw!r} contains '..'; only folders inside ComfyUI's input folder can be read")
    base = os.path.realpath(folder_paths.get_input_directory())
    full = os.path.realpath(os.path.join(base, *[p for p in parts if p]))
    if os.path.commonpath([base, full]) != base:
        raise FDIError(
            f"the {what} {raw!r} leads outside ComfyUI's input folder (through a link); "
            "only folders inside it can be read"
        )
    if not os.path.isdir(full):
        raise FDIError(
            f"the {what} {raw!r} does not exist in ComfyUI's input folder ({base}); create it and put the images there"
        )
    return full


def check_inside(paths, base_folder: str, what: str) -> None:
    """Raise if any of ``paths`` (files found in a folder) really lives outside ``base_folder``."""
    base = os.path.realpath(base_folder)
    for p in paths:
        real = os.path.realpath(p)
        if os.path.commonpath([base, real]) != base:
            raise FDIError(
                f"{what} file {os.path.basename(str(p))!r} is a link to outside ComfyUI's input folder; "
                "copy the image in instead"
            )


# ------------------------------------------------------------------------------------------------
# devices, dtypes, model management


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 (or bf16) where ComfyUI says the device supports it, else fp32."""
    if choice != "auto":
        if choice not in DTYPES:
            raise FDIError(f"unknown dtype {choice!r}; use one of {', '.join(DTYPE_CHOICES)}")
        return parse_dtype(choice)
    if mm.should_use_fp16(device, prioritize_performance=False):
        return torch.float16
    if mm.should_use_bf16(device, prioritize_performance=False):
        return torch.bfloat16
    return torch.float32


class ModuleHolder(torch.nn.Module):
    """A plain container so ``ModelPatcher`` can manage a library module.

    ``ModelPatcher`` writes bookkeeping attributes (``device``, ``model_lowvram``…) onto the module
    it manages; the library's encoder exposes ``device`` as a read-only property, so the patcher
    manages this holder instead and the library module stays untouched.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


class WholeModelPatcher(comfy.model_patcher.ModelPatcher):
    """A legacy ``ModelPatcher`` that loads its module whole or not at all (``docs/design.md``, ComfyUI
    integration).

    ComfyUI's legacy partial loading (a VRAM budget below the model's size, ``--lowvram``, ``--novram``) moves
    only leaf modules with weights and relies on ``comfy.ops`` layers to cast the rest per call. The pack's
    modules (the Q-Former, adapters) are plain ``torch.nn``: a partial load would leave parameters such as
    ``query_tokens``, embeddings and buffers behind on the offload device. So every load here is a full load
    (and ComfyUI counts the whole size as loaded), and freeing any part of it unloads all of it. Where dynamic
    VRAM is on, :func:`make_patcher` gives ComfyUI's own dynamic patcher instead, which loads such modules whole
    by itself."""

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, **kwargs):
        return super().load(
            device_to, lowvram_model_memory=0, force_patch_weights=force_patch_weights, full_load=True, **kwargs
        )

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False, **kwargs):
        return 0  # nothing freed in part: ComfyUI then unloads the whole module (LoadedModel.model_unload)


def make_patcher(module: torch.nn.Module, offload_device=None) -> comfy.model_patcher.ModelPatcher:
    """Wrap ``module`` (kept on the offload device) in the patcher ComfyUI gives its own models, with its devices.

    That is ``comfy.model_patcher.CoreModelPatcher``: under dynamic VRAM ComfyUI's ``ModelPatcherDynamic``, which
    copies every parameter and buffer of a plain ``torch.nn`` module to the load device on load and restores them
    all on any unload (whole, as :class:`WholeModelPatcher` does), and takes part in dynamic loads as ComfyUI's own
    models do. Where it is the legacy ``ModelPatcher`` (dynamic VRAM off, the CPU, older ComfyUI), a
    :class:`WholeModelPatcher`."""
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device() if offload_device is None else offload_device
    holder = ModuleHolder(module.to(offload_device)).eval()
    core = getattr(comfy.model_patcher, "CoreModelPatcher", WholeModelPatcher)
    if core is not comfy.model_patcher.ModelPatcher and core is not WholeModelPatcher:
        patcher = core(holder, load_device=load_device, offload_device=offload_device)
        if is_dynamic(patcher):  # a CPU load device gets the legacy class from the dynamic one's constructor
            return patcher
    return WholeModelPatcher(holder, load_device=load_device, offload_device=offload_device)


def is_dynamic(patcher) -> bool:
    """Whether ``patcher`` is ComfyUI's dynamic-VRAM patcher (``is_dynamic()``; ComfyUI before it: no)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def load_to_device(patcher: comfy.model_patcher.ModelPatcher) -> torch.device:
    """Ask ComfyUI to put ``patcher``'s module on its load device, whole (offloading others if needed)."""
    mm.load_models_gpu([patcher], force_full_load=True)
    return patcher.load_device


@dataclass
class ModelHandle:
    """A library module managed by ComfyUI: the ``BLIP2_QFORMER`` and ``FDI_ADAPTER`` values.

    ``module`` is the library object (:class:`fdi.encoder.QFormerEncoder`, :class:`fdi.adapter.FDIAdapter`),
    ``patcher`` the ``ModelPatcher`` that loads and offloads it, ``name`` the file or folder it came from."""

    module: object
    patcher: comfy.model_patcher.ModelPatcher
    name: str

    def loaded(self):
        """The module, on ComfyUI's load device (other models offloaded if needed)."""
        load_to_device(self.patcher)
        return self.module


@dataclass(eq=False)
class GuidanceHandle:
    """The ``FDI_GUIDANCE`` value: the adapter's output for some images (on the intermediate device).

    ``guidance`` is a :class:`fdi.adapter.FDIGuidance`; ``channels`` the adapter's level widths and
    ``base_family`` the model family it was trained for, so ``FDIApplyGuidance`` can refuse a MODEL
    of another shape; ``label`` names the FDI for messages; ``guidance_window`` is the adapter's recorded window
    (``None``: its file records none) and ``display_name`` the adapter's, for
    :func:`fdi.restoration.guidance_windows`. The tensors stay where the adapter's output was put
    (ComfyUI's intermediate device); the patches copy what each model call reads to its device.
    """

    guidance: object
    channels: tuple
    base_family: str
    label: str = ""
    guidance_window: Optional[Tuple[float, float]] = None
    display_name: str = "the adapter"


# ------------------------------------------------------------------------------------------------
# progress


def progress_callback(total: int) -> Callable[[int, int], None]:
    """A library progress callback that drives a ComfyUI ``ProgressBar`` and honours Cancel.

    It raises ComfyUI's ``InterruptProcessingException`` when the user cancels; the library loops
    write nothing before their last step, so cancelling leaves no partial output.
    """
    bar = comfy.utils.ProgressBar(max(int(total), 1))

    def callback(done: int, total_: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, max(int(total_), 1))

    return callback


def interrupt_check() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    mm.throw_exception_if_processing_interrupted()
