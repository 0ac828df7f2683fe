"""The bad-input matrix of the command line: every named bad input gives exit code 2, one line that
names the problem (and the fix), and writes nothing.

Run with ``FDI_MATRIX_REPORT=matrix.md`` to also write the table of cases and their messages.
Inputs that look odd but are valid (16-bit, palette and CMYK images, a 1×1 reference image) are in
``test_odd_but_valid_images_are_handled``. The ComfyUI side of the matrix (the same problems
through the nodes, with the server still serving the next prompt) is in the ComfyUI tests.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_sd import randomise_adapter, tiny_adapter_config

from fdi.adapter import FDIAdapter, FDIAdapterConfig
from fdi.cli import main
from fdi.images import save_image
from fdi.instruction import FDI

MESSAGES: dict = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd_folder, tiny_blip2_folder):
    """Valid inputs of every kind; each case breaks one of them."""
    r = tmp_path_factory.mktemp("matrix")
    shutil.copytree(tiny_blip2_folder, r / "blip2")
    (r / "deg").mkdir(), (r / "clean").mkdir()
    torch.manual_seed(0)
    for i in range(2):
        save_image(torch.rand(3, 20, 20), r / "deg" / f"{i}.png")
        save_image(torch.rand(3, 20, 20), r / "clean" / f"{i}.png")
    fdi = FDI(tokens=torch.randn(8, 32), encoder="tiny-blip2:aaaa", n_pairs=2, label="t")
    fdi.save(r / "t.fdi.safetensors")
    torch.manual_seed(1)
    adapter = randomise_adapter(FDIAdapter(tiny_adapter_config(), base_family="custom-base", encoder="tiny-blip2:aaaa"))
    adapter.save(r / "a.safetensors", fdi=fdi)
    save_image(torch.rand(3, 40, 40), r / "in.png")
    return {"root": r, "sd": tiny_sd_folder}


def _copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(src: Path, dst: Path, change) -> Path:
    from fdi.files import read_header

    tensors = load_file(src)
    _, meta = read_header(src)
    tensors, meta = change(dict(tensors), dict(meta))
    save_file(tensors, dst, metadata=meta)
    return dst


def _raw_header(dst: Path, header: dict, data: bytes) -> Path:
    h = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return dst


def case_args(name: str, w: dict, t: Path):
    """Return the CLI arguments of one bad-input case (building its inputs under ``t``)."""
    r, sd = w["root"], w["sd"]
    out_fdi = t / "out" / "o.fdi.safetensors"
    extract = [
        "extract",
        "--blip2",
        r / "blip2",
        "--degraded",
        r / "deg",
        "--clean",
        r / "clean",
        "-o",
        out_fdi,
        "--quiet",
    ]
    restore = [
        "restore",
        "--sd",
        sd,
        "--adapter",
        r / "a.safetensors",
        "--image",
        r / "in.png",
        "-o",
        t / "out",
        "--steps",
        "1",
        "--inversion-steps",
        "1",
        "--quiet",
    ]
    combine = lambda *files: ["combine", *files, "-o", out_fdi]  # noqa: E731

    def with_folder(idx: int, folder: Path):
        a = list(extract)
        a[idx] = folder
        return a

    def folder_with(files: dict) -> Path:
        d = t / "d"
        d.mkdir(exist_ok=True)
        for fname, content in files.items():
            p = d / fname
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                content(p)
        return d

    fdi_file = r / "t.fdi.safetensors"
    if name == "extract: unmatched file names":
        return with_folder(
            4,
            folder_with(
                {
                    "0.png": lambda p: save_image(torch.rand(3, 8, 8), p),
                    "zz.png": lambda p: save_image(torch.rand(3, 8, 8), p),
                }
            ),
        )
    if name == "extract: empty folder":
        return with_folder(4, folder_with({}))
    if name == "extract: non-image file in a folder":
        shutil.copytree(r / "deg", t / "d")
        (t / "d" / "notes.txt").write_text("x")
        return with_folder(4, t / "d")
    if name == "extract: zero-length image":
        shutil.copytree(r / "deg", t / "d")
        (t / "d" / "1.png").write_bytes(b"")
        return with_folder(4, t / "d")
    if name == "extract: animated GIF":
        shutil.copytree(r / "deg", t / "d")
        (t / "d" / "1.png").unlink()
        frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
        frames[0].save(t / "d" / "1.gif", save_all=True, append_images=frames[1:])
        return with_folder(4, t / "d")
    if name == "extract: folder is not a BLIP-2 checkpoint":
        (t / "nb").mkdir()
        return with_folder(2, t / "nb")
    if name == "extract: checkpoint of another model type":
        d = _copy_folder(r / "blip2", t / "clip")
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "model_type": "clip"}))
        return with_folder(2, d)
    if name == "extract: checkpoint missing Q-Former tensors":
        d = _copy_folder(r / "blip2", t / "noq")
        _rewrite(
            d / "model.safetensors",
            d / "model.safetensors",
            lambda ts, m: ({k: v for k, v in ts.items() if not k.startswith("qformer.")}, m),
        )
        return with_folder(2, d)
    if name == "extract: pickle (.bin) checkpoint":
        d = _copy_folder(r / "blip2", t / "pk")
        (d / "model.safetensors").unlink()
        torch.save({}, d / "pytorch_model.bin")
        return with_folder(2, d)
    if name == "extract: truncated checkpoint":
        d = _copy_folder(r / "blip2", t / "tr")
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 3])
        return with_folder(2, d)
    if name == "extract: output folder does not exist":
        a = list(extract)
        a[8] = t / "out" / "missing" / "o.fdi.safetensors"
        return a
    if name == "combine: weights count not matching inputs":
        return combine(fdi_file, fdi_file) + ["--weights", "1"]
    if name == "combine: FDIs of different encoders":
        other = _rewrite(fdi_file, t / "other.fdi.safetensors", lambda ts, m: (ts, {**m, "encoder": "blip2-flan:bbbb"}))
        return combine(fdi_file, other)
    if name == "combine: NaN in an FDI file":

        def nan(ts, m):
            ts["fdi"] = ts["fdi"].clone()
            ts["fdi"][0, 0] = float("nan")
            return ts, m

        return combine(_rewrite(fdi_file, t / "nan.fdi.safetensors", nan))
    if name == "combine: file of another format":
        return combine(_rewrite(fdi_file, t / "x.fdi.safetensors", lambda ts, m: (ts, {**m, "format": "lora"})))
    if name == "combine: FDI format version from the future":
        return combine(_rewrite(fdi_file, t / "x.fdi.safetensors", lambda ts, m: (ts, {**m, "format_version": "7"})))
    if name == "combine: truncated safetensors":
        data = fdi_file.read_bytes()
        (t / "x.fdi.safetensors").write_bytes(data[:-100])
        return combine(t / "x.fdi.safetensors")
    if name == "combine: header that lies about sizes":
        return combine(
            _raw_header(
                t / "x.fdi.safetensors",
                {"fdi": {"dtype": "F32", "shape": [32, 768], "data_offsets": [0, 98304]}},
                b"\0" * 64,
            )
        )
    if name == "combine: huge claimed shape":
        return combine(
            _raw_header(
                t / "x.fdi.safetensors",
                {"fdi": {"dtype": "F32", "shape": [2**35, 2**35], "data_offsets": [0, 16]}},
                b"\0" * 16,
            )
        )
    if name == "combine: integer FDI tensor":
        return combine(
            _rewrite(fdi_file, t / "x.fdi.safetensors", lambda ts, m: ({"fdi": ts["fdi"].to(torch.int32)}, m))
        )
    if name == "combine: pickle .pt file":
        torch.save({"fdi": torch.zeros(8, 32)}, t / "x.pt")
        return combine(t / "x.pt")
    if name == "restore: adapter for another channel layout":
        a = FDIAdapter(
            FDIAdapterConfig(channels=(320, 640, 1280, 1280), token_width=32, num_tokens=8, heads=8),
            base_family="sdxl-base",
            encoder="tiny-blip2:aaaa",
        )
        a.save(t / "sdxl.safetensors", fdi=FDI(tokens=torch.randn(8, 32), encoder="tiny-blip2:aaaa"))
        return [*restore[:4], t / "sdxl.safetensors", *restore[5:]]
    if name == "restore: adapter of another base family":
        a = FDIAdapter(tiny_adapter_config(), base_family="sd2.1-v", encoder="tiny-blip2:aaaa")
        a.save(t / "v.safetensors", fdi=FDI(tokens=torch.randn(8, 32), encoder="tiny-blip2:aaaa"))
        return [*restore[:4], t / "v.safetensors", *restore[5:]]
    if name == "restore: FDI width not matching the adapter":
        FDI(tokens=torch.randn(8, 16), encoder="tiny-blip2:aaaa").save(t / "w.fdi.safetensors")
        return restore + ["--fdi", t / "w.fdi.safetensors"]
    if name == "restore: 1x1 image":
        save_image(torch.rand(3, 1, 1), t / "tiny.png")
        return [*restore[:5], "--image", t / "tiny.png", *restore[7:]]
    if name == "restore: unreadable image":
        (t / "bad.png").write_text("not a png")
        return [*restore[:5], "--image", t / "bad.png", *restore[7:]]
    if name == "restore: weights count not matching adapters":
        return restore + ["--weight", "1", "--weight", "2"]
    if name == "restore: guidance end outside 0..1":
        return restore + ["--guidance-end", "1.5"]
    if name == "restore: missing model folder":
        return [restore[0], "--sd", t / "no-model", *restore[3:]]
    if name == "restore: NaN weights in the adapter file":

        def nanw(ts, m):
            k = next(
                k for k in ts if k.endswith("weight") and ts[k].dtype.is_floating_point and not k.startswith("fdi")
            )
            ts[k] = ts[k].clone()
            ts[k].view(-1)[0] = float("nan")
            return ts, m

        _rewrite(r / "a.safetensors", t / "nan.safetensors", nanw)
        return [*restore[:4], t / "nan.safetensors", *restore[5:]]
    if name == "adapter-info: pickle adapter":
        torch.save({}, t / "a.pt")
        return ["adapter-info", t / "a.pt"]
    if name == "eval: missing counterpart":
        (t / "p").mkdir(), (t / "g").mkdir()
        save_image(torch.rand(3, 8, 8), t / "p" / "a.png")
        save_image(torch.rand(3, 8, 8), t / "g" / "b.png")
        return ["eval", "--pred", t / "p", "--gt", t / "g", "--report", t / "out" / "r.json"]
    if name == "train: batch size not divisible by accumulation":
        return [
            "train",
            "--sd",
            sd,
            "--fdi",
            fdi_file,
            "--degraded",
            r / "deg",
            "--clean",
            r / "clean",
            "-o",
            t / "out" / "a.safetensors",
            "--batch-size",
            "3",
            "--grad-accum",
            "2",
            "--max-steps",
            "1",
            "--resolution",
            "64",
            "--device",
            "cpu",
            "--adapter-config",
            json.dumps(json.loads(tiny_adapter_config().to_json())),
        ]
    raise KeyError(name)


CASES = [
    "extract: unmatched file names",
    "extract: empty folder",
    "extract: non-image file in a folder",
    "extract: zero-length image",
    "extract: animated GIF",
    "extract: folder is not a BLIP-2 checkpoint",
    "extract: checkpoint of another model type",
    "extract: checkpoint missing Q-Former tensors",
    "extract: pickle (.bin) checkpoint",
    "extract: truncated checkpoint",
    "extract: output folder does not exist",
    "combine: weights count not matching inputs",
    "combine: FDIs of different encoders",
    "combine: NaN in an FDI file",
    "combine: file of another format",
    "combine: FDI format version from the future",
    "combine: truncated safetensors",
    "combine: header that lies about sizes",
    "combine: huge claimed shape",
    "combine: integer FDI tensor",
    "combine: pickle .pt file",
    "restore: adapter for another channel layout",
    "restore: adapter of another base family",
    "restore: FDI width not matching the adapter",
    "restore: 1x1 image",
    "restore: unreadable image",
    "restore: weights count not matching adapters",
    "restore: guidance end outside 0..1",
    "restore: missing model folder",
    "restore: NaN weights in the adapter file",
    "adapter-info: pickle adapter",
    "eval: missing counterpart",
    "train: batch size not divisible by accumulation",
]


def _snapshot(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(world, tmp_path, capsys, name):
    (tmp_path / "out").mkdir()
    args = [str(a) for a in case_args(name, world, tmp_path)]
    before_out, before_world = _snapshot(tmp_path / "out"), _snapshot(world["root"])
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error:")]
    assert rc == 2, (name, err)
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), (name, err)
    assert _snapshot(tmp_path / "out") == before_out, f"{name}: something was written"
    assert _snapshot(world["root"]) == before_world, f"{name}: the inputs changed"
    MESSAGES[name] = lines[0][len("error: ") :]


def test_matrix_is_large_enough():
    assert len(CASES) >= 25 and len(set(CASES)) == len(CASES)


def teardown_module(module):
    report = os.environ.get("FDI_MATRIX_REPORT")
    if report and MESSAGES:
        rows = ["| bad input | message |", "|---|---|"] + [
            f"| {k} | {v.replace('|', '/')} |" for k, v in MESSAGES.items()
        ]
        Path(report).write_text("\n".join(rows) + "\n")


def test_odd_but_valid_images_are_handled(world, tmp_path):
    """16-bit, palette, CMYK and 1×1 reference images are valid inputs of extraction."""
    r = world["root"]
    d, c = tmp_path / "d", tmp_path / "c"
    d.mkdir(), c.mkdir()
    Image.fromarray((np.arange(400, dtype=np.uint16).reshape(20, 20) * 150)).save(d / "a.png")
    Image.new("RGB", (20, 20), "teal").convert("P").save(c / "a.png")
    Image.new("RGB", (16, 16), "orange").convert("CMYK").save(d / "b.jpg")
    Image.new("RGB", (1, 1), "white").save(c / "b.png")
    out = tmp_path / "o.fdi.safetensors"
    assert (
        main(
            ["extract", "--blip2", str(r / "blip2"), "--degraded", str(d), "--clean", str(c), "-o", str(out), "--quiet"]
        )
        == 0
    )
    f = FDI.load(out)
    assert f.n_pairs == 2 and torch.isfinite(f.tokens).all()


# ------------------------------------------------------------------------------------------------------------
# train: every input is checked before any work. A refusal names the input (exit 2, one line), comes before
# BLIP-2, the SD model or accelerate is touched (each replaced by a tripwire here), and leaves no file behind.

TRAIN_CASES = {
    "sd: pickle .ckpt (with --blip2: refused before the task FDI is extracted)": "pickle checkpoint (.ckpt)",
    "sd: missing path": "does not exist",
    "sd: neither a folder nor .safetensors": "neither a diffusers folder nor a .safetensors",
    "sd: folder without unet/": "missing unet",
    "sd: truncated .safetensors": "truncated",
    "sd: .safetensors that is not an SD checkpoint": "not a Stable Diffusion UNet checkpoint",
    "sd: SD 2.x file that does not tell epsilon from v": "--prediction-type",
    "sd-config: missing folder": "model config folder",
    "blip2: missing folder": "does not exist",
    "blip2: folder that is not BLIP-2": "no config.json",
    "blip2: pickle weights only": "pickle weights",
    "blip2: truncated weights": "truncated",
    "blip2: weights without the Q-Former": "Q-Former",
    "blip2: a file that is not a packed BLIP-2": "BLIP-2",
    "neither --blip2 nor --fdi": "the task FDI is needed",
    "fdi: not an FDI file": "pickle",
    "fdi: adapter file given as FDI": "not an FDI file",
    "pairs: missing degraded folder": "does not exist",
    "pairs: unmatched names": "zz",
    "pairs: unreadable image": "is empty (0 bytes)",
    "validation pairs: unreadable image": "could not be read",
    "output: folder does not exist": "does not exist; create it first",
    "output: not a .safetensors name": "must end with '.safetensors'",
    "checkpoint-dir: a file": "is a file",
    "adapter-config: unknown key": "unknown key",
    "adapter-config: heads not dividing the UNet's widths": "divisible by heads=3",
    "adapter-config: not JSON": "not valid JSON",
    "resume: folder without state.json": "no state.json",
    "resume: damaged state.json": "unreadable",
    "resume: checkpoint of another run": "batch_size: checkpoint 8, this run 2",
    "device: not a device": "not a device",
    "device: CUDA on a machine without it": "no CUDA GPU",
    "checkpoints-total-limit 0": "--checkpoints-total-limit must be at least 1",
    "batch size not divisible by accumulation": "not divisible by processes",
}


def _sd2_header_only(path: Path) -> Path:
    """A single file with the SD 2.x cross-attention key and no v_pred marker or probe bias."""
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, 1024, dtype=torch.float16)}, path)
    return path


def _checkpoint(folder: Path, state) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return folder


def train_case_args(name: str, w: dict, t: Path) -> list:
    """The ``train`` arguments of one case: valid inputs (tiny SD, tiny BLIP-2, two pairs) with one broken."""
    r, sd = w["root"], w["sd"]
    opts = {
        "--sd": sd,
        "--blip2": r / "blip2",
        "--degraded": r / "deg",
        "--clean": r / "clean",
        "-o": t / "out" / "a.safetensors",
        "--max-steps": "1",
        "--resolution": "64",
        "--batch-size": "2",
        "--device": "cpu",
        "--adapter-config": json.dumps({"res_blocks": 1, "heads": 4, "se_reduction": 4}),
    }
    if name.startswith("sd:") or name.startswith("sd-config:"):
        opts["--sd"] = {
            "sd: pickle .ckpt (with --blip2: refused before the task FDI is extracted)": t / "model.ckpt",
            "sd: missing path": t / "nothing",
            "sd: neither a folder nor .safetensors": t / "model.gguf",
            "sd: folder without unet/": t / "sd",
            "sd: truncated .safetensors": t / "cut.safetensors",
            "sd: .safetensors that is not an SD checkpoint": t / "fdi.safetensors",
            "sd: SD 2.x file that does not tell epsilon from v": t / "sd2.safetensors",
            "sd-config: missing folder": t / "sd2.safetensors",
        }[name]
        torch.save({}, t / "model.ckpt")
        (t / "model.gguf").write_bytes(b"GGUF" + bytes(64))
        if name == "sd: folder without unet/":
            shutil.rmtree(_copy_folder(sd, t / "sd") / "unet")
        (t / "cut.safetensors").write_bytes((r / "t.fdi.safetensors").read_bytes()[:40])
        shutil.copy(r / "t.fdi.safetensors", t / "fdi.safetensors")
        _sd2_header_only(t / "sd2.safetensors")
        if name == "sd-config: missing folder":
            opts["--sd-config"] = t / "no-config"
    elif name.startswith("blip2:"):
        d = t / "blip2"
        if name == "blip2: missing folder":
            pass
        elif name == "blip2: folder that is not BLIP-2":
            d.mkdir()
        elif name == "blip2: a file that is not a packed BLIP-2":
            d = r / "t.fdi.safetensors"
        elif name == "blip2: weights without the Q-Former":
            _copy_folder(r / "blip2", d)
            _rewrite(
                d / "model.safetensors",
                d / "model.safetensors",
                lambda ts, m: ({k: v for k, v in ts.items() if not k.startswith("qformer.")}, m),
            )
        else:
            _copy_folder(r / "blip2", d)
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").unlink()
            if name == "blip2: pickle weights only":
                torch.save({}, d / "pytorch_model.bin")
            else:
                (d / "model.safetensors").write_bytes(data[: len(data) // 3])
        opts["--blip2"] = d
    elif name == "neither --blip2 nor --fdi":
        del opts["--blip2"]
    elif name.startswith("fdi:"):
        del opts["--blip2"]
        if name == "fdi: not an FDI file":
            torch.save({}, t / "t.pt")
            opts["--fdi"] = t / "t.pt"
        else:
            opts["--fdi"] = r / "a.safetensors"
    elif name == "pairs: missing degraded folder":
        opts["--degraded"] = t / "no-such-folder"
    elif name == "pairs: unmatched names":
        d = _copy_folder(r / "deg", t / "d")
        (d / "1.png").rename(d / "zz.png")
        opts["--degraded"] = d
    elif name == "pairs: unreadable image":
        d = _copy_folder(r / "deg", t / "d")
        (d / "1.png").write_bytes(b"")
        opts["--degraded"] = d
    elif name == "validation pairs: unreadable image":
        d = _copy_folder(r / "clean", t / "vc")
        (d / "0.png").write_bytes(b"not a png at all")
        opts.update({"--validate-every": "1", "--val-degraded": r / "deg", "--val-clean": d})
    elif name == "output: folder does not exist":
        opts["-o"] = t / "out" / "missing" / "a.safetensors"
    elif name == "output: not a .safetensors name":
        opts["-o"] = t / "out" / "a.pt"
    elif name == "checkpoint-dir: a file":
        (t / "run").write_text("x")
        opts["--checkpoint-dir"] = t / "run"
    elif name.startswith("adapter-config:"):
        opts["--adapter-config"] = {
            "adapter-config: unknown key": '{"res_block": 1}',
            "adapter-config: heads not dividing the UNet's widths": '{"heads": 3}',
            "adapter-config: not JSON": "{res_blocks: 1}",
        }[name]
    elif name.startswith("resume:"):
        state = {"format": "fdi_train_state", "format_version": 1, "step": 1}
        if name == "resume: checkpoint of another run":
            state["signature"] = {"batch_size": 8, "resolution": 64, "seed": 0, "n_pairs": 2}
        opts["--resume"] = (
            t / "empty-ckpt"
            if name == "resume: folder without state.json"
            else _checkpoint(t / "ckpt", "{not json" if name == "resume: damaged state.json" else state)
        )
        (t / "empty-ckpt").mkdir()
    elif name == "device: not a device":
        opts["--device"] = "gpu0"
    elif name == "device: CUDA on a machine without it":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        opts["--device"] = "cuda"
    elif name == "checkpoints-total-limit 0":
        opts["--checkpoints-total-limit"] = "0"
    elif name == "batch size not divisible by accumulation":
        opts.update({"--batch-size": "3", "--grad-accum": "2"})
    else:
        raise KeyError(name)
    return ["train", *[str(x) for kv in opts.items() for x in kv], "--quiet"]


@pytest.fixture
def tripwires(monkeypatch):
    """Loading BLIP-2 or the SD model, extracting, or starting accelerate fails the test: work began."""

    def tripped(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} before every input was checked")

        return fail

    monkeypatch.setattr("fdi.encoder.QFormerEncoder.from_pretrained", tripped("BLIP-2 loaded"))
    monkeypatch.setattr("fdi.models.load_sd", tripped("the SD model loaded"))
    monkeypatch.setattr("fdi.extract.extract_fdi_from_sources", tripped("the task FDI extracted"))
    monkeypatch.setattr("accelerate.Accelerator.__init__", tripped("accelerate started"))


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_train_refuses_each_bad_input_before_any_work(world, tmp_path, capsys, tripwires, name):
    import time

    (tmp_path / "out").mkdir()
    args = train_case_args(name, world, tmp_path)
    before_out, before_world = _snapshot(tmp_path / "out"), _snapshot(world["root"])
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main(args)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1, (name, err)
    assert TRAIN_CASES[name] in lines[0], (name, lines[0])
    assert _snapshot(tmp_path / "out") == before_out, f"{name}: something was written"
    assert _snapshot(world["root"]) == before_world, f"{name}: the inputs changed"
    assert seconds < 5, f"{name}: refused after {seconds:.1f} s"
    MESSAGES[f"train: {name}"] = lines[0][len("error: ") :]


@pytest.mark.parametrize("blip2", ["folder", "packed file"])
def test_train_valid_inputs_pass_the_checks(world, tmp_path, tripwires, blip2):
    """The cases above break one input each: with none broken, the checks pass and work begins (BLIP-2 as a
    folder or as one file made by pack-blip2)."""
    (tmp_path / "out").mkdir()
    args = train_case_args("checkpoints-total-limit 0", world, tmp_path)
    args[args.index("--checkpoints-total-limit") + 1] = "2"
    if blip2 == "packed file":
        from fdi.blip2_pack import pack_blip2

        pack_blip2(world["root"] / "blip2", tmp_path / "blip2.safetensors")
        args[args.index("--blip2") + 1] = str(tmp_path / "blip2.safetensors")
    with pytest.raises(AssertionError, match="accelerate started"):
        main(args)
    assert _snapshot(tmp_path / "out") == set()


def test_train_refused_after_extraction_leaves_no_run_folder(world, tmp_path, monkeypatch, capsys):
    """A refusal only the loaded model can make comes after the task FDI was extracted and saved in the run
    folder: the run folder the run created goes with it."""
    from fdi.errors import FDIError

    def refuse(self):
        assert (self.run_dir / "train.fdi.safetensors").is_file()  # the extraction ran and wrote its FDI
        raise FDIError("this UNet cannot take the adapter")

    monkeypatch.setattr("fdi.training.run.TrainRun.load_models", refuse)
    (tmp_path / "out").mkdir()
    args = train_case_args("checkpoints-total-limit 0", world, tmp_path)
    args[args.index("--checkpoints-total-limit") + 1] = "2"
    assert main(args) == 2
    assert "this UNet cannot take the adapter" in capsys.readouterr().err
    assert _snapshot(tmp_path / "out") == set()
