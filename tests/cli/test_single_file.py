"""`python -m fdi train` and `restore` on single-file checkpoints, offline.

Fast: tiny single files (tests/tiny_bases.py) with ComfyUI's ``v_pred`` / ``ztsnr`` markers, described by the tiny
folder (``--sd-config``). Slow: the cached full-size SD 2.1 random-weight fixture (ComfyUI's CheckpointSave output,
built by tests/comfyui/test_e2e.py) without --sd-config."""

from __future__ import annotations

import pytest
import torch
from sd21_fixture import cache_dir

from fdi.adapter import FDIAdapter
from fdi.cli import main
from fdi.images import save_image
from fdi.instruction import FDI

SINGLE = cache_dir() / "checkpoints" / "sd21_random_v1.safetensors"

needs_sd21_single_file = pytest.mark.skipif(
    not SINGLE.is_file(), reason="needs the cached SD 2.1 single file (tests/comfyui/test_e2e.py builds it)"
)


def _train_args(sd, fdi, tmp_path, out, *extra) -> list:
    return [
        "train",
        "--sd",
        str(sd),
        *extra,
        "--fdi",
        str(fdi),
        "--degraded",
        str(tmp_path / "deg"),
        "--clean",
        str(tmp_path / "clean"),
        "-o",
        str(out),
        "--resolution",
        "64",
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--num-workers",
        "0",
        "--checkpoint-every",
        "0",
        "--device",
        "cpu",
        "--quiet",
        "--adapter-config",
        '{"res_blocks": 1}',
    ]


def _pairs(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (tmp_path / d).mkdir()
    for i in range(2):
        c = torch.rand(3, 64, 72, generator=g)
        save_image(c, tmp_path / "clean" / f"{i}.png")
        save_image((0.5 * c + 0.3).clamp(0, 1), tmp_path / "deg" / f"{i}.png")


def test_the_adapter_family_follows_the_v_pred_and_ztsnr_markers(tiny_sd_folder, tmp_path, capsys):
    """A single file marked ``v_pred`` + ``ztsnr`` is a v-prediction model on the zero-terminal-SNR schedule in both
    commands: ``train`` makes a v-family adapter, and ``restore`` takes a v-family adapter (what ComfyUI's
    FDITrainAdapter makes on such a file) on it; the same weights without markers refuse that adapter."""
    from tiny_bases import write_tiny_single_file
    from tiny_sd import make_adapter, tiny_fdi

    marked = write_tiny_single_file(tiny_sd_folder, tmp_path / "v.safetensors", ("v_pred", "ztsnr"))
    plain = write_tiny_single_file(tiny_sd_folder, tmp_path / "e.safetensors")
    _pairs(tmp_path)
    tiny_fdi().save(tmp_path / "t.fdi.safetensors")
    config = ["--sd-config", str(tiny_sd_folder)]
    out = tmp_path / "trained.safetensors"
    assert main(_train_args(marked, tmp_path / "t.fdi.safetensors", tmp_path, out, *config)) == 0
    assert FDIAdapter.from_file(out).base_family == "custom-v"
    adapter = make_adapter(family="custom-v").save(tmp_path / "a.safetensors", fdi=tiny_fdi())
    restore = ["restore", "--adapter", str(adapter), "--image", str(tmp_path / "deg" / "0.png"), *config]
    restore += ["--steps", "2", "--inversion-steps", "2", "--quiet", "--device", "cpu"]
    assert main(restore + ["--sd", str(marked), "-o", str(tmp_path / "res")]) == 0
    assert (tmp_path / "res" / "0.png").is_file()
    capsys.readouterr()
    assert main(restore + ["--sd", str(plain), "-o", str(tmp_path / "res_e")]) == 2
    assert "trained for custom-v but the model is custom-base" in capsys.readouterr().err


@pytest.mark.slow
@needs_sd21_single_file
def test_train_and_restore_from_a_single_file_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (tmp_path / d).mkdir()
    for i in range(2):
        c = torch.rand(3, 64, 72, generator=g)
        save_image(c, tmp_path / "clean" / f"{i}.png")
        save_image((0.5 * c + 0.3).clamp(0, 1), tmp_path / "deg" / f"{i}.png")
    FDI(tokens=torch.randn(8, 32, generator=g), encoder="t:0123456789abcdef", n_pairs=2).save(
        tmp_path / "t.fdi.safetensors"
    )
    out = tmp_path / "a.safetensors"
    assert (
        main(
            [
                "train",
                "--sd",
                str(SINGLE),
                "--fdi",
                str(tmp_path / "t.fdi.safetensors"),
                "--degraded",
                str(tmp_path / "deg"),
                "--clean",
                str(tmp_path / "clean"),
                "-o",
                str(out),
                "--resolution",
                "64",
                "--max-steps",
                "1",
                "--batch-size",
                "1",
                "--num-workers",
                "0",
                "--checkpoint-every",
                "0",
                "--device",
                "cpu",
                "--quiet",
                "--adapter-config",
                '{"res_blocks": 1}',
            ]
        )
        == 0
    )
    adapter = FDIAdapter.from_file(out)
    assert adapter.base_family == "sd2.1-base" and adapter.fdi is not None
    assert (
        main(
            [
                "restore",
                "--sd",
                str(SINGLE),
                "--adapter",
                str(out),
                "--image",
                str(tmp_path / "deg" / "0.png"),
                "-o",
                str(tmp_path / "res"),
                "--steps",
                "1",
                "--inversion-steps",
                "1",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tmp_path / "res" / "0.png").is_file()
    # the prediction type can be forced: a v-prediction run makes an sd2.1-v adapter, refused by an epsilon restore
    out_v = tmp_path / "v.safetensors"
    assert (
        main(
            [
                "train",
                "--sd",
                str(SINGLE),
                "--prediction-type",
                "v_prediction",
                "--fdi",
                str(tmp_path / "t.fdi.safetensors"),
                "--degraded",
                str(tmp_path / "deg"),
                "--clean",
                str(tmp_path / "clean"),
                "-o",
                str(out_v),
                "--resolution",
                "64",
                "--max-steps",
                "1",
                "--batch-size",
                "1",
                "--num-workers",
                "0",
                "--checkpoint-every",
                "0",
                "--device",
                "cpu",
                "--quiet",
                "--adapter-config",
                '{"res_blocks": 1}',
            ]
        )
        == 0
    )
    assert FDIAdapter.from_file(out_v).base_family == "sd2.1-v"
    capsys.readouterr()
    assert (
        main(
            [
                "restore",
                "--sd",
                str(SINGLE),
                "--adapter",
                str(out_v),
                "--image",
                str(tmp_path / "deg" / "0.png"),
                "-o",
                str(tmp_path / "res_v"),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "trained for SD 2.1 (768-v) but the model is SD 2.1 base" in capsys.readouterr().err
