"""ComfyUI entry point of the FDI node pack (and nothing else).

ComfyUI loads a custom-node folder as a package and looks for ``comfy_entrypoint`` (V3 API) in it.
This file must stay light and lazy:

* importing it in plain Python imports no ComfyUI module (``comfy``, ``folder_paths``,
  ``comfy_api``, ``nodes``) and no torch: the node classes live in :mod:`.nodes` and are
  imported only when ComfyUI calls :func:`comfy_entrypoint`;
* when it is imported *inside* ComfyUI (``folder_paths`` is then already loaded), the model
  folders ``blip2``, ``fdi_adapters``, ``fdi`` and ``fdi_classifiers`` are registered with ``folder_paths`` right away,
  before any node lists them. ComfyUI applies ``extra_model_paths.yaml`` before it loads custom
  nodes, so paths a user declared there are kept; our default folder under ``models/`` is put
  first (it is where ``FDISave`` writes) and the accepted file types are set.

``WEB_DIRECTORY`` is served by ComfyUI at ``/extensions/<pack folder>/``: the node help pages
``web/docs/<NodeId>.md`` (written by ``tools/build_help.py``). Translations live in ``locales/``,
which ComfyUI reads by itself (``/i18n``).

The pack uses relative imports only (ComfyUI names the package after its folder path).
"""

from __future__ import annotations

import os
import sys

#: served at /extensions/<pack folder>/ (read by ComfyUI before it calls comfy_entrypoint)
WEB_DIRECTORY = "./web"

#: model folder name -> accepted file suffixes (``blip2`` holds folders, see nodes.common)
MODEL_FOLDERS = {
    "blip2": {""},
    "fdi_adapters": {".safetensors"},
    "fdi": {".safetensors"},
    "fdi_classifiers": {".safetensors"},
}


def register_model_folders(folder_paths) -> None:
    """Register :data:`MODEL_FOLDERS` with ComfyUI's ``folder_paths`` module (idempotent).

    Keeps any path already declared for the same name (``extra_model_paths.yaml``); puts
    ``<models_dir>/<name>`` first and creates it, so saved files have a home that lists them.
    """
    for name, suffixes in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        entry = folder_paths.folder_names_and_paths.get(name)
        paths = list(entry[0]) if entry else []
        if default in paths:
            paths.remove(default)
        paths.insert(0, default)
        folder_paths.folder_names_and_paths[name] = (paths, set(suffixes))
        try:
            os.makedirs(default, exist_ok=True)
        except OSError:  # read-only install: listing still works, saving will say why it cannot
            pass


if "folder_paths" in sys.modules:  # loaded by ComfyUI: register before any node lists a folder
    register_model_folders(sys.modules["folder_paths"])


async def comfy_entrypoint():
    """ComfyUI V3 entry point: the extension that lists the FDI nodes."""
    import folder_paths

    register_model_folders(folder_paths)
    from .nodes import FDIExtension

    return FDIExtension()


__all__ = ["comfy_entrypoint", "register_model_folders", "MODEL_FOLDERS", "WEB_DIRECTORY"]
