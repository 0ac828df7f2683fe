"""transformers' image-processor names without torchvision: bound to the PIL classes it falls back to, quietly.

transformers 5 made ``<Model>ImageProcessor`` the torchvision backend; without torchvision (this pack's CPU
install has none) the name falls back to ``<Model>ImageProcessorPil`` and logs "requires torchvision (not
installed); falling back …" once per name. The pack never runs these processors (BLIP-2 preprocessing is
:meth:`fdi.encoder.QFormerEncoder.preprocess`); diffusers imports ``CLIPImageProcessor`` and
``SiglipImageProcessor`` at module level (its Stable Diffusion pipelines, which load single-file
checkpoints) and the BLIP-2 fixtures write their ``preprocessor_config.json`` with ``BlipImageProcessor``.
"""

from __future__ import annotations

from typing import List, Sequence

#: the processors the pack's imports touch: diffusers' SD pipelines and IP-adapter loader, the BLIP-2 fixtures
PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor", "BlipImageProcessor")


def use_pil_image_processors(names: Sequence[str] = PROCESSORS) -> List[str]:
    """Where torchvision is missing, bind ``transformers.<name>`` to ``<name>Pil``, the class transformers
    itself falls back to (the same pixels), before anything imports it, so its warning is not printed.
    Returns the names bound; a no-op with torchvision, for a name already resolved, and on transformers 4
    (no ``…Pil`` class, no warning)."""
    import sys

    import transformers
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return []
    pils = {}
    for name in names:
        try:
            pils[name] = getattr(transformers, f"{name}Pil")
        except (AttributeError, ImportError, RuntimeError):
            continue
    # importing the first processor runs transformers' processing_utils, which executes transformers/__init__.py
    # again (direct_transformers_import) and puts a new module object in sys.modules: bind on both
    bound = []
    for module in {id(m): m for m in (transformers, sys.modules["transformers"])}.values():
        for name, pil in pils.items():
            if name not in vars(module):  # not resolved yet (by an earlier call or import)
                setattr(module, name, pil)
                bound.append(name)
    return sorted(set(bound))
