"""``FDIColorFix`` (``nodes/postprocess_nodes.py``) in a fresh interpreter with ComfyUI's modules: registered, and
equal to :mod:`fdi.colorfix`. Needs ``COMFYUI_DIR``."""

from __future__ import annotations

import comfyui_harness as harness
import pytest

COMFYUI_DIR = harness.comfyui_dir()

NODE_SCRIPT = """
ids = [n.define_schema().node_id for n in asyncio.run(extension.get_node_list())]
post = sys.modules[name + ".nodes.postprocess_nodes"]
colorfix = sys.modules[name + ".fdi.colorfix"]
g = torch.Generator().manual_seed(0)
image, reference = torch.rand(2, 40, 56, 3, generator=g), torch.rand(1, 40, 56, 3, generator=g) * 0.5
out = {}
for method in ("none", "wavelet", "adain"):
    got = post.FDIColorFix.execute(image, reference, method)[0]
    want = colorfix.color_fix(image.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2), method).permute(0, 2, 3, 1)
    out[method] = [list(got.shape), float((got - want).abs().max()), float((got - image).abs().max())]
print(json.dumps({"ids": ids, "out": out}))
"""


@pytest.mark.comfyui
@pytest.mark.skipif(
    not COMFYUI_DIR, reason="COMFYUI_DIR is not set: run under ComfyUI's Python with COMFYUI_DIR=/path/to/ComfyUI"
)
def test_node_is_registered_and_equals_the_library(tmp_path):
    code = harness.script(NODE_SCRIPT, COMFYUI_DIR, tmp_path, pack_name="comfyui_fdi_colorfix")
    result = harness.run_json(code, tmp_path, timeout=300)
    assert "FDIColorFix" in result["ids"]
    for method, (shape, vs_library, change) in result["out"].items():
        assert shape == [2, 40, 56, 3] and vs_library < 1e-6
        assert (change == 0.0) if method == "none" else (change > 0.1)
