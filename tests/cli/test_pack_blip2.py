"""``python -m fdi pack-blip2`` through the command line: pack, then extract with the file; the bad-input matrix
(exit code 2, one line naming the problem and the fix, nothing written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_blip2 import TINY_IMAGE_SIZE, build_tiny_other_layout

from fdi.cli import main
from fdi.files import read_header
from fdi.images import save_image
from fdi.instruction import FDI


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def world(tiny_blip2_folder, tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("pack")
    shutil.copytree(tiny_blip2_folder, r / "blip2")
    torch.manual_seed(0)
    for side in ("deg", "clean"):
        (r / side).mkdir()
        for i in range(2):
            save_image(torch.rand(3, TINY_IMAGE_SIZE + 8 * i, TINY_IMAGE_SIZE), r / side / f"{i}.png")
    assert run_cli("pack-blip2", r / "blip2", "-o", r / "packed.safetensors", "--quiet") == 0
    return r


def test_pack_then_extract_with_the_file(world, tmp_path, capsys):
    out = tmp_path / "blip2-fp32.safetensors"
    assert run_cli("pack-blip2", world / "blip2", "-o", out, "--dtype", "fp32") == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: ") and "in fp32" in printed and "encoder blip2:" in printed
    fdis = []
    for blip2 in (world / "blip2", out):
        o = tmp_path / f"{len(fdis)}.fdi.safetensors"
        args = ("extract", "--blip2", blip2, "--degraded", world / "deg", "--clean", world / "clean", "-o", o)
        assert run_cli(*args, "--quiet") == 0
        fdis.append(FDI.load(o))
    assert fdis[0].encoder == fdis[1].encoder
    assert float((fdis[1].tokens - fdis[0].tokens).norm() / fdis[0].tokens.norm()) <= 1e-5
    assert read_header(world / "packed.safetensors")[1]["dtype"] == "fp16"  # the default


def _broken_copy(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    save_file(change(load_file(dst / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def case_args(name: str, w: Path, t: Path) -> list:
    """The arguments of one bad-input case (its inputs built under ``t``; the output goes to ``t / "out"``)."""
    pack = lambda src, *more: ["pack-blip2", src, "-o", t / "out" / "p.safetensors", "--quiet", *more]  # noqa: E731
    if name == "pack: folder without a Q-Former":
        return pack(_broken_copy(w / "blip2", t / "b", lambda d: {k: v for k, v in d.items() if "qformer" not in k}))
    if name == "pack: InstructBLIP folder":
        return pack(build_tiny_other_layout(t / "iblip", "instructblip"))
    if name == "pack: BLIP-1 folder":
        return pack(build_tiny_other_layout(t / "blip1", "blip"))
    if name == "pack: an already packed file":
        return pack(w / "packed.safetensors")
    if name == "pack: folder does not exist":
        return pack(t / "nope")
    if name == "pack: weights beyond fp16's range":
        big = lambda d: {**d, "qformer.layernorm.weight": d["qformer.layernorm.weight"] * 1e6}  # noqa: E731
        return pack(_broken_copy(w / "blip2", t / "b", big))
    if name == "pack: output exists":
        (t / "out" / "p.safetensors").write_bytes(b"keep me")
        return pack(w / "blip2")
    if name == "pack: output not .safetensors":
        return ["pack-blip2", w / "blip2", "-o", t / "out" / "p.bin", "--quiet"]
    if name == "pack: output inside the BLIP-2 folder":
        return ["pack-blip2", w / "blip2", "-o", w / "blip2" / "p.safetensors", "--quiet"]
    extract = ["extract", "--degraded", w / "deg", "--clean", w / "clean", "-o", t / "out" / "o.fdi.safetensors"]
    if name == "extract: --blip2 is a weight file of a BLIP-2 folder":
        return [*extract, "--blip2", w / "blip2" / "model.safetensors", "--quiet"]
    if name == "extract: --blip2 is another safetensors file":
        save_file({"x": torch.zeros(2)}, t / "x.safetensors", metadata={"format": "fdi"})
        return [*extract, "--blip2", t / "x.safetensors", "--quiet"]
    raise AssertionError(name)


CASES = [
    "pack: folder without a Q-Former",
    "pack: InstructBLIP folder",
    "pack: BLIP-1 folder",
    "pack: an already packed file",
    "pack: folder does not exist",
    "pack: weights beyond fp16's range",
    "pack: output exists",
    "pack: output not .safetensors",
    "pack: output inside the BLIP-2 folder",
    "extract: --blip2 is a weight file of a BLIP-2 folder",
    "extract: --blip2 is another safetensors file",
]

EXPECTED = {
    "pack: folder without a Q-Former": "lacks Q-Former tensors",
    "pack: InstructBLIP folder": "model type 'instructblip', not BLIP-2",
    "pack: BLIP-1 folder": "model type 'blip', not BLIP-2",
    "pack: an already packed file": "already a packed BLIP-2 file",
    "pack: folder does not exist": "does not exist",
    "pack: weights beyond fp16's range": "qformer.layernorm.weight holds values up to .*--dtype fp32",
    "pack: output exists": "exists; choose another name, or replace it \\(--overwrite\\)",
    "pack: output not .safetensors": "must end with '.safetensors'",
    "pack: output inside the BLIP-2 folder": "inside the BLIP-2 folder",
    "extract: --blip2 is a weight file of a BLIP-2 folder": "weights of a BLIP-2 folder.*pack-blip2",
    "extract: --blip2 is another safetensors file": "not an FDI BLIP-2 pack \\(format='fdi'\\).*pack-blip2",
}


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(world, tmp_path, capsys, name):
    import re

    (tmp_path / "out").mkdir()
    args = case_args(name, world, tmp_path)
    before_out, before_world = _snapshot(tmp_path / "out"), _snapshot(world)
    capsys.readouterr()
    rc = run_cli(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (name, err)
    assert re.search(EXPECTED[name], err[0]), (name, err[0])
    assert _snapshot(tmp_path / "out") == before_out, f"{name}: something was written"
    assert _snapshot(world) == before_world, f"{name}: the inputs changed"


def test_unknown_dtype_is_a_usage_error(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("pack-blip2", world / "blip2", "-o", tmp_path / "x.safetensors", "--dtype", "int8")
    assert exc.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_leaves_no_file(world, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the third tensor is written: exit 130, neither the file nor its temporary is left."""
    import fdi.blip2_pack as pack_module

    real, calls = pack_module.tensor_bytes, []

    def tensor_bytes(t):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(t)

    monkeypatch.setattr(pack_module, "tensor_bytes", tensor_bytes)
    assert run_cli("pack-blip2", world / "blip2", "-o", tmp_path / "p.safetensors", "--quiet") == 130
    assert "interrupted: no output was written" in capsys.readouterr().err
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []
