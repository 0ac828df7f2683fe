"""Fuzz the file loaders: any byte string gives an FDI/adapter or the pack's own FDIError — never a
crash, a hang or an unbounded allocation.

The default run tries a small sample; ``-m slow`` runs 10,000+ generated files per loader.
Generated files: random bytes, valid files with flipped bytes or cut short, and well-formed headers
with adversarial dtypes, shapes, offsets and metadata.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdi.errors import FDIError
from fdi.instruction import FDI

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def _valid_fdi_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "v.fdi.safetensors")
        FDI(tokens=torch.randn(4, 8), encoder="fuzz:1", n_pairs=2, label="x", pairs=torch.randn(2, 4, 8)).save(p)
        with open(p, "rb") as fh:
            return fh.read()


def _valid_adapter_bytes() -> bytes:
    from fdi.adapter import FDIAdapter, FDIAdapterConfig

    cfg = FDIAdapterConfig(channels=(8, 8, 16, 16), token_width=8, num_tokens=4, heads=2, se_reduction=4)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "a.safetensors")
        fdi = FDI(tokens=torch.randn(4, 8), encoder="fuzz:1", n_pairs=1)
        FDIAdapter(cfg, base_family="custom-base", encoder="fuzz:1").save(p, fdi=fdi)
        with open(p, "rb") as fh:
            return fh.read()


VALID = _valid_fdi_bytes()
VALID_ADAPTER = _valid_adapter_bytes()

dtypes = st.sampled_from(["F32", "F16", "BF16", "I32", "U8", "I64", "F64", "BOOL", "Q4", "", "F8_E4M3"])
dims = st.one_of(st.integers(0, 16), st.integers(-3, 2**62), st.just(2**40))
tensor_entry = st.fixed_dictionaries(
    {
        "dtype": dtypes,
        "shape": st.lists(dims, max_size=4),
        "data_offsets": st.lists(st.integers(-5, 2**40), min_size=0, max_size=3),
    }
)
meta_values = st.one_of(st.text(max_size=8), st.sampled_from(["fdi", "1", "fdi_adapter", "2", "x:1"]))
metadata = st.dictionaries(
    st.sampled_from(["format", "format_version", "encoder", "n_pairs", "label", "config", "base_family"]),
    meta_values,
    max_size=7,
)


@st.composite
def crafted(draw) -> bytes:
    names = draw(
        st.lists(
            st.sampled_from(["fdi", "pairs", "fdi_pairs", "w", "image_branch.conv_in.weight"]), max_size=3, unique=True
        )
    )
    header = {n: draw(tensor_entry) for n in names}
    if draw(st.booleans()):
        header["__metadata__"] = draw(metadata)
    raw = json.dumps(header).encode()
    data = draw(st.binary(max_size=256))
    claimed = draw(st.one_of(st.just(len(raw)), st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", claimed) + raw + data


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from([VALID, VALID_ADAPTER])))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


files = st.one_of(st.binary(max_size=512), crafted(), mutated())


def _check_loader(load, blob: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "f" + suffix)
        with open(p, "wb") as fh:
            fh.write(blob)
        try:
            load(p)
        except FDIError:
            pass


def _fuzz(load, suffix: str, examples: int):
    @settings(max_examples=examples, deadline=2000, suppress_health_check=_SUPPRESS, derandomize=True, database=None)
    @given(files)
    def run(blob):
        _check_loader(load, blob, suffix)

    run()


def _load_adapter(path):
    from fdi.adapter import FDIAdapter

    FDIAdapter.from_file(path)


def test_fuzz_adapter_loader_sample():
    _fuzz(_load_adapter, ".safetensors", 300)


@pytest.mark.slow
def test_fuzz_adapter_loader_10k():
    _fuzz(_load_adapter, ".safetensors", 10_000)


def test_fuzz_fdi_loader_sample():
    _fuzz(FDI.load, ".fdi.safetensors", 300)


@pytest.mark.slow
def test_fuzz_fdi_loader_10k():
    _fuzz(FDI.load, ".fdi.safetensors", 10_000)
