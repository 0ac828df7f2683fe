"""``pack-blip2``: a BLIP-2 folder's vision model, query tokens and Q-Former in one safetensors file.

The FDI extracted through the file equals the folder's (fp32: to 1e-5 relative; fp16: within a bound relative to
the FDI itself), the fingerprints agree so that the two combine, the file holds what its metadata says and nothing
of the language model, and every bad input is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_blip2 import TINY_TOKENS, TINY_WIDTH, shard_tiny_blip2

from fdi.blip2_pack import pack_blip2
from fdi.blip2_source import PACK_FORMAT
from fdi.encoder import QFormerEncoder
from fdi.errors import FDIError
from fdi.extract import extract_fdi
from fdi.files import read_header
from fdi.instruction import combine


@pytest.fixture(scope="module")
def folder(tiny_blip2_folder, tmp_path_factory) -> Path:
    """A copy named like the real checkpoint, so fingerprints carry a recognisable name."""
    d = tmp_path_factory.mktemp("src") / "blip2-opt-tiny"
    shutil.copytree(tiny_blip2_folder, d)
    return d


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("packed")
    return {dt: pack_blip2(folder, out / f"tiny-{dt}.safetensors", dtype=dt).path for dt in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def pairs():
    torch.manual_seed(3)
    clean = torch.rand(4, 3, 40, 36)
    degraded = (clean + 0.4 * torch.rand_like(clean)).clamp(0, 1)
    return degraded, clean


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fdi_from_fp32_file_equals_folder(folder, packed, pairs):
    enc_dir = QFormerEncoder.from_pretrained(folder)
    enc_file = QFormerEncoder.from_pretrained(packed["fp32"])
    f_dir, f_file = extract_fdi(enc_dir, *pairs), extract_fdi(enc_file, *pairs)
    assert f_file.shape == (TINY_TOKENS, TINY_WIDTH)
    assert _rel(f_file.tokens, f_dir.tokens) <= 1e-5
    # the same encoder: the fingerprint is the source's, so the two FDIs combine and an adapter takes either
    assert enc_file.fingerprint == enc_dir.fingerprint == f"blip2-opt-tiny:{enc_dir.fingerprint.split(':')[1]}"
    assert f_file.encoder == f_dir.encoder
    assert combine([f_file, f_dir], mode="mean").shape == f_dir.shape
    assert enc_file.name == "tiny-fp32"


def test_fdi_from_fp16_file_within_rounding_of_the_effect(folder, packed, pairs):
    """fp16 weights move the FDI by far less than the FDI itself (and than another task's FDI differs)."""
    enc_dir = QFormerEncoder.from_pretrained(folder)
    enc16 = QFormerEncoder.from_pretrained(packed["fp16"])
    assert enc16.fingerprint == enc_dir.fingerprint
    assert enc16.qformer.layernorm.weight.dtype == torch.float32  # upcast on load, as from a folder
    f_dir, f16 = extract_fdi(enc_dir, *pairs), extract_fdi(enc16, *pairs)
    degraded, clean = pairs
    other = extract_fdi(enc_dir, (clean - 0.4 * torch.rand_like(clean)).clamp(0, 1), clean)  # another task
    err, effect = _rel(f16.tokens, f_dir.tokens), _rel(other.tokens, f_dir.tokens)
    assert effect > 0.5, effect
    # measured 8.1e-4 of the FDI's norm (fp16 rounds every weight by up to 2^-11), against 3.2 for another task
    assert 0 < err <= 4e-3, err


def test_metadata_and_contents(folder, packed):
    src = load_file(folder / "model.safetensors")
    infos, meta = read_header(packed["fp16"])
    assert meta["format"] == PACK_FORMAT == "fdi_blip2" and meta["format_version"] == "1"
    assert meta["dtype"] == "fp16" and meta["source"] == "blip2-opt-tiny"
    assert meta["encoder"] == QFormerEncoder.from_pretrained(folder).fingerprint
    config = json.loads(meta["config"])
    folder_config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "blip-2" and config["num_query_tokens"] == TINY_TOKENS
    assert config["vision_config"] == folder_config["vision_config"]
    assert config["qformer_config"] == folder_config["qformer_config"]
    assert "text_config" not in config  # the language model is not in the file
    assert json.loads(meta["preprocessor"]) == json.loads((folder / "preprocessor_config.json").read_text())
    wanted = {k for k in src if k.startswith(("vision_model.", "qformer.")) or k == "query_tokens"}
    assert set(infos) == wanted
    assert not any(k.startswith(("language_model.", "language_projection")) for k in infos)
    assert int(meta["parameters"]) == sum(src[k].numel() for k in wanted)
    # weights in fp16, query tokens kept in fp32 (their values are what the fingerprint hashes)
    assert infos["query_tokens"]["dtype"] == "F32"
    assert {v["dtype"] for k, v in infos.items() if k != "query_tokens"} == {"F16"}
    f16 = load_file(packed["fp16"])
    assert torch.equal(f16["query_tokens"], src["query_tokens"])
    w = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(f16[w], src[w].half())
    f32 = load_file(packed["fp32"])
    assert all(torch.equal(f32[k], src[k]) for k in wanted)
    assert read_header(packed["fp32"])[1]["dtype"] == "fp32"


def test_sharded_folder_language_model_shard_never_opened(folder, packed, tmp_path):
    d = tmp_path / "blip2-opt-tiny"
    shards = shard_tiny_blip2(folder, d)
    shards[2].unlink()  # the language model's shard: never needed
    out = pack_blip2(d, tmp_path / "p.safetensors", dtype="fp32").path
    assert out.read_bytes() == packed["fp32"].read_bytes()  # deterministic, whatever the source layout


def test_progress_and_interrupt_leave_no_file(folder, tmp_path):
    seen = []
    out = tmp_path / "p.safetensors"
    pack_blip2(folder, out, dtype="fp16", progress=lambda d, t: seen.append((d, t)))
    n = len(read_header(out)[0])
    assert seen[-1] == (n, n) and [d for d, _ in seen] == list(range(1, n + 1))

    def stop(done, total):
        if done == 5:
            raise KeyboardInterrupt

    target = tmp_path / "sub"
    target.mkdir()
    with pytest.raises(KeyboardInterrupt):
        pack_blip2(folder, target / "p.safetensors", progress=stop)
    assert list(target.iterdir()) == []  # neither the file nor its temporary


def test_existing_output_kept_unless_overwrite(folder, tmp_path):
    """The bad inputs themselves are the CLI matrix (tests/cli/test_pack_blip2.py); here: the library's own rules."""
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(FDIError, match="exists.*--overwrite"):
        pack_blip2(folder, out)
    assert out.read_bytes() == b"keep me"
    pack_blip2(folder, out, overwrite=True)
    assert read_header(out)[1]["format"] == PACK_FORMAT
    with pytest.raises(FDIError, match="unknown dtype 'bf16'.*fp16, fp32"):
        pack_blip2(folder, tmp_path / "q.safetensors", dtype="bf16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


def test_loader_refuses_files_that_are_not_packs(folder, packed, tmp_path):
    with pytest.raises(FDIError, match="weights of a BLIP-2 folder.*pack-blip2"):
        QFormerEncoder.from_pretrained(folder / "model.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, other, metadata={"format": "fdi"})
    with pytest.raises(FDIError, match="not an FDI BLIP-2 pack.*pack-blip2"):
        QFormerEncoder.from_pretrained(other)
    # a tampered file: query tokens changed after packing
    t = load_file(packed["fp32"])
    _, meta = read_header(packed["fp32"])
    t["query_tokens"] = t["query_tokens"] + 1
    save_file(t, tmp_path / "tampered.safetensors", metadata=meta)
    with pytest.raises(FDIError, match="altered"):
        QFormerEncoder.from_pretrained(tmp_path / "tampered.safetensors")
    newer = dict(meta, format_version="2")
    save_file(load_file(packed["fp32"]), tmp_path / "newer.safetensors", metadata=newer)
    with pytest.raises(FDIError, match="version '2'"):
        QFormerEncoder.from_pretrained(tmp_path / "newer.safetensors")
    with pytest.raises(FDIError, match="does not exist"):
        QFormerEncoder.from_pretrained(tmp_path / "missing.safetensors")


MEMORY_SCRIPT = """
import sys
sys.path[:0] = sys.argv[3:]
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, BlipImageProcessor
from tiny_blip2 import tiny_blip2_config

def hwm_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

cfg = tiny_blip2_config().to_dict()
cfg["vision_config"].update(hidden_size=512, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=8)
cfg["qformer_config"]["encoder_hidden_size"] = 512
model = Blip2ForConditionalGeneration(Blip2Config.from_dict(cfg))
model.save_pretrained(sys.argv[1])
BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(sys.argv[1])
del model
import gc; gc.collect()
from fdi.blip2_pack import pack_blip2
from fdi.blip2_source import open_blip2
open_blip2(sys.argv[1])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current RSS
before = hwm_mb("VmRSS")
done = pack_blip2(sys.argv[1], sys.argv[2], dtype="fp32")
print(done.bytes / 2**20, hwm_mb("VmHWM") - before)
"""


def test_packing_holds_one_tensor_at_a_time(tmp_path):
    """Packing a 150 MB model raises the process's peak memory by far less than the model (one tensor: 16 MB)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    args = [tmp_path / "wide", tmp_path / "p.safetensors", root / "tests", root]
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    size_mb, grew_mb = map(float, proc.stdout.split()[-2:])
    assert size_mb > 140 and grew_mb < 0.4 * size_mb, (size_mb, grew_mb)


def test_plain_reader_reads_what_safetensors_reads(tmp_path):
    from fdi.files import SafetensorsReader

    torch.manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2, 2).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    save_file(tensors, tmp_path / "t.safetensors")
    with SafetensorsReader(tmp_path / "t.safetensors") as reader:
        for k, v in load_file(tmp_path / "t.safetensors").items():
            got = reader.get(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
