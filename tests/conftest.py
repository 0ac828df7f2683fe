"""Shared pytest fixtures: tiny random models built once per test session into a temporary folder.

Keep this file to fixtures that several test modules use; module-specific helpers belong in the
module (or in a ``tests/tiny_*.py`` builder).
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
