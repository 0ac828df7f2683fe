"""Same inputs → byte-identical files on the CPU (restored PNGs, FDI files, adapter files)."""

from __future__ import annotations

import shutil

import torch
from tiny_sd import randomise_adapter, tiny_adapter_config

from fdi.adapter import FDIAdapter
from fdi.cli import main
from fdi.images import save_image
from fdi.instruction import FDI


def test_restore_outputs_are_byte_identical(tmp_path, tiny_sd_folder):
    torch.manual_seed(0)
    fdi = FDI(tokens=torch.randn(8, 32), encoder="tiny-blip2:aaaa", n_pairs=1)
    randomise_adapter(FDIAdapter(tiny_adapter_config(), base_family="custom-base", encoder="tiny-blip2:aaaa")).save(
        tmp_path / "a.safetensors", fdi=fdi
    )
    save_image(torch.rand(3, 40, 52), tmp_path / "in.png")
    outs = []
    for run in ("one", "two"):
        args = [
            "restore",
            "--sd",
            tiny_sd_folder,
            "--adapter",
            tmp_path / "a.safetensors",
            "--image",
            tmp_path / "in.png",
            "-o",
            tmp_path / run,
            "--steps",
            "2",
            "--inversion-steps",
            "2",
            "--quiet",
        ]
        assert main([str(a) for a in args]) == 0
        outs.append((tmp_path / run / "in.png").read_bytes())
    assert outs[0] == outs[1]
    args += ["--strength", "0.5"]  # another strength gives another image
    args[args.index("-o") + 1] = tmp_path / "three"
    assert main([str(a) for a in args]) == 0
    assert (tmp_path / "three" / "in.png").read_bytes() != outs[0]


def test_extract_and_adapter_files_are_byte_identical(tmp_path, tiny_blip2_folder):
    shutil.copytree(tiny_blip2_folder, tmp_path / "blip2")
    for d in ("deg", "clean"):
        (tmp_path / d).mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        save_image(torch.rand(3, 24, 24, generator=g), tmp_path / "deg" / f"{i}.png")
        save_image(torch.rand(3, 24, 24, generator=g), tmp_path / "clean" / f"{i}.png")
    blobs = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.fdi.safetensors"
        assert (
            main(
                [
                    "extract",
                    "--blip2",
                    str(tmp_path / "blip2"),
                    "--degraded",
                    str(tmp_path / "deg"),
                    "--clean",
                    str(tmp_path / "clean"),
                    "-o",
                    str(out),
                    "--label",
                    "x",
                    "--keep-pairs",
                    "--quiet",
                ]
            )
            == 0
        )
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]
    adapters = []
    for run in ("a", "b"):
        torch.manual_seed(3)
        FDIAdapter(tiny_adapter_config(), base_family="custom-base").save(tmp_path / f"{run}.safetensors")
        adapters.append((tmp_path / f"{run}.safetensors").read_bytes())
    assert adapters[0] == adapters[1]
