"""``FDIRestore`` (``nodes/guidance_nodes.py``) with tiles in a fresh interpreter with ComfyUI's modules, against
the library's tiled restore (:mod:`fdi.tiles`). Needs ``COMFYUI_DIR`` and the SD 2.1 fixture."""

from __future__ import annotations

import comfyui_harness as harness
import pytest

COMFY_SCRIPT = """
import numpy as np
import comfy.sd, comfy.utils
gn = sys.modules[name + ".nodes.guidance_nodes"]
from sd21_fixture import random_adapter
from fdi.instruction import FDI

adapter = random_adapter(768, 32, seed=1)
adapter.encoder = "blip2-test:0123456789abcdef"
fdi = FDI(torch.randn(32, 768, generator=torch.Generator().manual_seed(0)), encoder=adapter.encoder, n_pairs=1)
adapter.save(folder_paths.get_folder_paths("fdi_adapters")[0] + "/tiles.safetensors", fdi=fdi)
handle = gn.FDIAdapterLoader.execute("tiles.safetensors")[0]
model, clip, vae = comfy.sd.load_checkpoint_guess_config({ckpt!r}, output_vae=True, output_clip=True)[:3]
tokens = clip.tokenize("")
positive = clip.encode_from_tokens_scheduled(tokens)
yy, xx = torch.meshgrid(torch.linspace(0, 1, 192), torch.linspace(0, 1, 256), indexing="ij")
image = torch.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy, 0.6 - 0.3 * xx * yy], -1)[None]
calls = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append([value, total]))
out = {{}}
for key, tile, overlap in (("plain", 0, 0), ("one_tile", 256, 64), ("tiled", 128, 64)):
    calls.clear()
    with torch.inference_mode():  # as ComfyUI's executor runs a node
        img = gn.FDIRestore.execute(model, vae, image, handle, positive, 2, 2, 1.0, 1.0, 1.0,
                                    tile_size=tile, tile_overlap=overlap)[0]
    np.save({base!r} + f"/{{key}}.npy", img.numpy())
    out[key + "_progress"] = calls[-1] if calls else None
del model, clip, vae
import gc; gc.collect()
from fdi.pipeline import FDIRestorationPipeline, AdapterUse
pipe = FDIRestorationPipeline.from_pretrained({diffusers!r})
use = AdapterUse(adapter, fdi, 1.0)
x = image.permute(0, 3, 1, 2)
for key, tile in (("d_plain", 0), ("d_tiled", 128)):
    r = pipe.restore(x, [use], steps=2, inversion_steps=2, guidance_end=1.0, tile_size=tile, tile_overlap=64)
    np.save({base!r} + f"/{{key}}.npy", r.detach().permute(0, 2, 3, 1).numpy())
print(json.dumps(out))
"""


@pytest.mark.comfyui
@pytest.mark.skipif(
    not harness.comfyui_dir(),
    reason="COMFYUI_DIR is not set: run under ComfyUI's Python with COMFYUI_DIR=/path/to/ComfyUI",
)
def test_fdi_restore_tiles_in_comfyui_match_the_library_and_one_tile_is_exact(tmp_path):
    """FDIRestore with tiles on the full-size random SD 2.1 fixture: a tile covering the image is bit-identical to no
    tiles; 6 tiles agree with the diffusers pipeline's tiled restore as closely as the untiled doors agree."""
    import numpy as np
    import sd21_fixture

    ckpt = sd21_fixture.checkpoint_path()
    diffusers = sd21_fixture.cache_dir() / "diffusers" / sd21_fixture.FIXTURE_NAME
    if not ckpt.is_file() or not diffusers.is_dir():
        pytest.skip("the SD 2.1 fixture is not built yet (tests/comfyui/test_e2e.py builds it)")
    body = COMFY_SCRIPT.format(base=str(tmp_path), ckpt=str(ckpt), diffusers=str(diffusers))
    boot = dict(pack_name="comfyui_fdi_tiles", tests_path=True, library_path=True, threads=2)
    code = harness.script(body, harness.comfyui_dir(), tmp_path, **boot)
    result = harness.run_json(code, tmp_path, timeout=1500)
    a = {k: np.load(tmp_path / f"{k}.npy") for k in ("plain", "one_tile", "tiled", "d_plain", "d_tiled")}
    assert np.array_equal(a["plain"], a["one_tile"])
    assert a["tiled"].shape == (1, 192, 256, 3)
    tiling_effect = np.abs(a["tiled"] - a["plain"]).mean()
    untiled_parity = np.abs(a["plain"] - a["d_plain"]).max()
    tiled_parity = np.abs(a["tiled"] - a["d_tiled"]).max()
    assert tiling_effect > 10 * np.abs(a["tiled"] - a["d_tiled"]).mean()  # the comparison below means something
    assert tiled_parity <= max(4 / 255, 2 * untiled_parity), (tiled_parity, untiled_parity)
    assert result["tiled_progress"] == [36, 36]  # 6 tiles x (encode + 2 inversion + 2 sampling calls + decode)
    assert result["plain_progress"] != result["tiled_progress"]
