"""Shared pytest fixtures: tiny random models built once per test session into a temporary folder.

The tests live by door: ``unit/`` (the library, ``test_<module>.py``), ``cli/`` (``python -m fdi`` and the
bench scripts), ``comfyui/`` (the pack: its files, and the pack inside a real ComfyUI through
``tools/comfyui_harness.py``, marked ``comfyui`` and skipped without ``COMFYUI_DIR``). Test modules never
import each other: shared helpers go to the builders here in ``tests/`` (``tiny_sd``, ``tiny_blip2``,
``sd21_fixture``, ``images_fixture``), to the harness, or to a fixture below.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the tests import the library as ``fdi`` from the repository root, the builders (``from tiny_sd import …``) from
# tests/ and the ComfyUI harness from tools/; the test modules live in tests/unit, tests/cli and tests/comfyui
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests", ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# never reach a model hub from a test
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The test models are tiny: thread start-up and spinning cost more than they save, and several
# runs share this machine's cores. One intra-op thread made a tiny-UNet step 3-4x faster here.
# FDI_TEST_THREADS=N overrides it.
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("FDI_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    """A tiny random SD 2.1-shaped diffusers folder (epsilon prediction); see ``tests/tiny_sd.py``."""
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "sd-eps", prediction_type="epsilon", seed=0)


@pytest.fixture(scope="session")
def tiny_sd_v_folder(tiny_sd_folder, tmp_path_factory) -> Path:
    """The same tiny SD folder with a v-prediction schedule (the SD 2.1 768 kind): a copy whose
    scheduler config says ``prediction_type: v_prediction``."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("tiny_sd_v") / "sd-v"
    shutil.copytree(tiny_sd_folder, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_sd_folder):
    """``FDIRestorationPipeline`` loaded from :func:`tiny_sd_folder` through the real loader (CPU, fp32)."""
    from fdi.pipeline import FDIRestorationPipeline

    return FDIRestorationPipeline.from_pretrained(tiny_sd_folder)


@pytest.fixture(scope="session")
def _tiny_blip2_build(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """The tiny BLIP-2 built once, and the global RNG state its build leaves (it seeds the global generator)."""
    from tiny_blip2 import build_tiny_blip2

    folder = tmp_path_factory.mktemp("tiny_blip2") / "tiny-blip2"
    with torch.random.fork_rng(devices=[]):
        build_tiny_blip2(folder, seed=0)
        state = torch.get_rng_state()
    return folder, state


@pytest.fixture(scope="module")
def tiny_blip2_folder(_tiny_blip2_build) -> Path:
    """A tiny random BLIP-2 folder (``build_tiny_blip2(folder, seed=0)``, see ``tests/tiny_blip2.py``), built once per
    session: read it or copy it, never write into it. Each module that asks for it gets the global RNG state a build
    of its own would leave, so its numbers do not depend on which module asked first."""
    folder, state = _tiny_blip2_build
    torch.set_rng_state(state)
    return folder


@pytest.fixture(scope="session")
def sd21_adapter():
    """``make(token_width, num_tokens, seed, base_family)``: ``sd21_fixture.random_adapter`` with those arguments,
    built once per session and handed out as a copy; each call leaves the global RNG state a build would."""
    import copy

    import sd21_fixture

    built: dict = {}

    def make(token_width: int = 768, num_tokens: int = 32, seed: int = 0, base_family: str = "sd2.1-base"):
        key = (token_width, num_tokens, seed, base_family)
        if key not in built:
            with torch.random.fork_rng(devices=[]):
                adapter = sd21_fixture.random_adapter(token_width, num_tokens, seed=seed, base_family=base_family)
                built[key] = (adapter, torch.get_rng_state())
        adapter, state = built[key]
        torch.set_rng_state(state)
        return copy.deepcopy(adapter)

    return make
