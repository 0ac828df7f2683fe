"""ComfyUI nodes of the FDI pack (V3 API). Imported only by ComfyUI, through the root ``comfy_entrypoint``.

Node ids are a contract (saved workflows refer to them):

========================  ======================================================================
``FDIQFormerLoader``      BLIP-2 folder + dtype → ``BLIP2_QFORMER``
``FDIExtract``            Q-Former, degraded/clean ``IMAGE`` batches, label → ``FDI``
``FDIExtractFromFolders`` Q-Former, two folders inside ComfyUI's input folder → ``FDI``
``FDISave`` / ``FDILoad`` ``FDI`` ↔ ``models/fdi/*.fdi.safetensors``
``FDICombine``            two ``FDI`` with weights, sum/mean/difference → ``FDI``
``FDIInspect``            1–4 ``FDI`` → ``IMAGE`` (similarity matrix + 2-D map)
``FDIAdapterLoader``      ``models/fdi_adapters`` file → ``FDI_ADAPTER``, embedded ``FDI``
``FDINoiseDecoupling``    adapter, ``FDI``, ``IMAGE`` → ``FDI_GUIDANCE``
``FDIApplyGuidance``      ``MODEL``, guidance, strength, window → ``MODEL`` (patched clone)
``FDIInvert``             ``MODEL``, positive, ``LATENT``, steps → ``LATENT`` (DDIM inversion)
``FDIRestore``            the whole pipeline → ``IMAGE``
``FDIColorFix``           restored ``IMAGE``, reference ``IMAGE``, method → ``IMAGE``
``FDIDegradePairs``       clean ``IMAGE``, degradation spec, seed → degraded and clean ``IMAGE``
``FDIDatasetPairs``       data set name, folder inside input/, split → ``FDI_PAIRS`` (and a summary)
``FDIExtractPairs``       Q-Former, ``FDI_PAIRS`` → ``FDI``
``FDIClassifierLoader``   ``models/fdi_classifiers/*.clf.safetensors`` → ``FDI_CLASSIFIER``
``FDIDetectDegradations`` Q-Former, classifier, ``IMAGE`` → ``FDI_DEGRADATIONS`` (per-label scores) and JSON
``FDIRestoreAuto``        FDIRestore with the adapters the scores pick (composite or progressive) → ``IMAGE``
========================  ======================================================================
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .auto_nodes import NODES as _AUTO_NODES
from .classifier_nodes import NODES as _CLASSIFIER_NODES
from .dataset_nodes import NODES as _DATASET_NODES
from .degrade_nodes import NODES as _DEGRADE_NODES
from .fdi_nodes import NODES as _FDI_NODES
from .guidance_nodes import NODES as _GUIDANCE_NODES
from .postprocess_nodes import NODES as _POSTPROCESS_NODES
from .train_nodes import NODES as _TRAIN_NODES

NODE_CLASSES = [
    *_FDI_NODES,
    *_GUIDANCE_NODES,
    *_POSTPROCESS_NODES,
    *_TRAIN_NODES,
    *_DEGRADE_NODES,
    *_DATASET_NODES,
    *_CLASSIFIER_NODES,
    *_AUTO_NODES,
]


class FDIExtension(ComfyExtension):
    """The FDI node pack as a ComfyUI V3 extension."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


__all__ = ["FDIExtension", "NODE_CLASSES"]
