"""Safe reads (header validation, pickle refused) and atomic writes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from fdi.errors import FDIError
from fdi.files import atomic_write, load_safetensors, read_header, save_safetensors


def _raw(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty", b""),
        ("short", b"\x01\x02"),
        ("huge_header", struct.pack("<Q", 10**12) + b"{}"),
        ("not_json", struct.pack("<Q", 4) + b"abcd"),
        ("list_header", _raw([1, 2])),
        ("bad_dtype", _raw({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)),
        ("lying_size", _raw({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 4)),
        ("huge_shape", _raw({"a": {"dtype": "F32", "shape": [2**39, 2**39], "data_offsets": [0, 4]}}, b"\0" * 4)),
        ("neg_shape", _raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4)),
        ("shape_mismatch", _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)),
        (
            "overlap",
            _raw(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                b"\0" * 12,
            ),
        ),
        ("bad_meta", _raw({"__metadata__": {"a": 1}})),
        ("zip", b"PK\x03\x04" + b"\0" * 20),
    ],
)
def test_corrupt_files_give_clean_errors(tmp_path, name, content):
    p = tmp_path / f"{name}.safetensors"
    p.write_bytes(content)
    with pytest.raises(FDIError):
        load_safetensors(p)


def test_truncated_real_file(tmp_path):
    p = tmp_path / "t.safetensors"
    save_file({"a": torch.randn(100)}, p)
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    with pytest.raises(FDIError, match="truncated|corrupt"):
        read_header(p)


def test_pickle_suffixes_refused(tmp_path):
    for suffix in (".pt", ".ckpt", ".bin", ".pth"):
        p = tmp_path / f"m{suffix}"
        torch.save({}, p)
        with pytest.raises(FDIError, match="pickle"):
            load_safetensors(p)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    save_safetensors({"a": torch.zeros(1)}, tmp_path / "p.safetensors", {})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "p.safetensors").stat().st_mode) == 0o666 & ~umask


def test_round_trip_and_partial_read(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_safetensors(t, tmp_path / "r.safetensors", {"k": "v"})
    got, meta = load_safetensors(tmp_path / "r.safetensors", keys=["a"])
    assert list(got) == ["a"] and torch.equal(got["a"], t["a"]) and meta == {"k": "v"}


def test_writer_is_deterministic_and_readable_by_safetensors(tmp_path):
    from safetensors.torch import load_file

    t = {
        "b": torch.randn(3, 4),
        "a": torch.arange(6, dtype=torch.int64).view(2, 3),
        "h": torch.randn(5).to(torch.bfloat16),
        "e": torch.zeros(0, 3),
        "m": torch.tensor([True, False]),
    }
    meta = {f"k{i}": str(i) for i in range(20)}
    save_safetensors(t, tmp_path / "1.safetensors", meta)
    save_safetensors(dict(reversed(list(t.items()))), tmp_path / "2.safetensors", dict(reversed(list(meta.items()))))
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()
    back = load_file(tmp_path / "1.safetensors")
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    _, m = read_header(tmp_path / "1.safetensors")
    assert m == meta


def test_a_header_length_ending_in_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file starts with its header's length (u64, little-endian): when that length's low byte is 0x80,
    the first byte is a pickle's protocol mark, but the ninth is the header's '{'. Such files are read (an adapter
    of the small world with a 0x2b80-byte header was refused); real pickles still are not."""
    for pad in range(400):
        meta = {"label": "x" * pad}
        p = tmp_path / "a.safetensors"
        save_safetensors({"w": torch.arange(3.0)}, p, meta)
        if p.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    tensors, metadata = load_safetensors(p)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and metadata == meta
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[0] == 0x80
    with pytest.raises(FDIError, match="pickle"):
        load_safetensors(legacy)
