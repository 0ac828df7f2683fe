"""One precision map (``fdi.dtypes``) and one display-name rule for adapters (``FDIAdapter.display_name``)."""

from __future__ import annotations

import pytest
import torch

from fdi import encoder
from fdi.adapter import FDIAdapter, FDIAdapterConfig
from fdi.dtypes import DTYPES, parse_dtype
from fdi.errors import FDIError
from fdi.instruction import FDI

SMALL = FDIAdapterConfig(channels=(8, 16, 16, 16), token_width=12, num_tokens=4, res_blocks=1, heads=2, se_reduction=4)


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("fp32", torch.float32),
        ("fp16", torch.float16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("BFLOAT16", torch.bfloat16),
        (None, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_parse_dtype(name, dtype):
    assert parse_dtype(name) is dtype


def test_one_map_for_every_caller():
    assert list(DTYPES) == ["fp32", "fp16", "bf16"]
    assert encoder.parse_dtype is parse_dtype  # the CLI and the benchmarks import it from there
    with pytest.raises(FDIError, match=r"unknown dtype 'fp8'; use fp32, fp16, bf16"):
        parse_dtype("fp8")


@pytest.mark.parametrize(
    "label, source, shown",
    [
        ("derain", "fdi_derain.safetensors", "derain (fdi_derain.safetensors)"),
        ("derain", "", "derain"),
        ("", "a.safetensors", "a.safetensors"),
        ("", "", "(unnamed)"),
        ("x.safetensors", "x.safetensors", "x.safetensors"),
    ],
)
def test_adapter_display_name(label, source, shown):
    with torch.device("meta"):
        adapter = FDIAdapter(SMALL, label=label)
    adapter.source = source
    assert adapter.display_name == shown
    assert adapter.describe().startswith(f"FDI adapter {shown}: ")


def test_messages_use_the_display_name(tmp_path):
    adapter = FDIAdapter(SMALL, encoder="blip2:aaaa", label="derain")
    path = adapter.save(tmp_path / "fdi_derain.safetensors")
    loaded = FDIAdapter.from_file(path)
    fdi = FDI(torch.ones(4, 12), encoder="other:bbbb", label="snow")
    with pytest.raises(FDIError, match=r"but adapter derain \(fdi_derain\.safetensors\) was trained"):
        loaded(torch.rand(1, 3, 16, 16), fdi)
