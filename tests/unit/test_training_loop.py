"""`fdi.training` / `python -m fdi train` on tiny random models: loss goes down, exact resume, bad input.

All runs use the tiny SD 2.1-shaped pipeline (conftest ``tiny_sd_folder``), the tiny adapter config
and 64-px crops. Torch runs single-threaded inside these tests: on a shared 2-core machine two
threads per process oversubscribe the CPU and make each step ~10× slower.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tiny_blip2 import TINY_TOKENS, TINY_WIDTH
from tiny_sd import tiny_adapter_config

from fdi.adapter import FDIAdapter
from fdi.errors import FDIError, FDIInterrupted
from fdi.images import save_image
from fdi.instruction import FDI
from fdi.sampling import diffusion_target, predict_x0
from fdi.training.config import TrainConfig
from fdi.training.run import train
from fdi.training.state import list_checkpoints

CAST = torch.tensor([0.35, 0.1, -0.05]).view(3, 1, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_sd_folder):
    """Colour-cast pairs (degraded = 0.6·clean + cast), a random FDI file, and a mis-scaled tiny SD.

    The SD copy has its UNet output layer scaled by 4, so that the frozen random UNet's noise
    prediction is far off and the adapter has something to learn through the guidance path.
    """
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("train")
    g = torch.Generator().manual_seed(0)
    for d in ("deg", "clean"):
        (root / d).mkdir()
    for i in range(6):
        clean = torch.rand(3, 40, 48 + 4 * i, generator=g)
        save_image(clean, root / "clean" / f"{i:02d}.png")
        save_image((0.6 * clean + CAST).clamp(0, 1), root / "deg" / f"{i:02d}.png")
    fdi = FDI(
        tokens=torch.randn(TINY_TOKENS, TINY_WIDTH, generator=g),
        encoder="tiny:0123456789abcdef",
        n_pairs=6,
        label="toy",
    )
    fdi.save(root / "toy.fdi.safetensors")
    sd = root / "sd"
    shutil.copytree(tiny_sd_folder, sd)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    with torch.no_grad():
        unet.conv_out.weight.mul_(4)
        unet.conv_out.bias.mul_(4)
    unet.save_pretrained(sd / "unet")
    return root


def _cfg(toy: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        sd=str(toy / "sd"),
        output=str(out),
        degraded=str(toy / "deg"),
        clean=str(toy / "clean"),
        fdi=str(toy / "toy.fdi.safetensors"),
        resolution=64,
        batch_size=4,
        lr=1e-2,
        num_workers=0,
        checkpoint_every=0,
        adapter_config=json.loads(tiny_adapter_config().to_json()),
        quiet=True,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_x0_and_targets_for_epsilon_and_v():
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    a = torch.tensor([0.9, 0.5, 0.01])
    z_t = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    # a perfect prediction of the target gives back z0 exactly, for each parametrisation
    for kind in ("epsilon", "v_prediction", "sample"):
        target = diffusion_target(z0, eps, a, kind)
        assert torch.allclose(predict_x0(z_t, target, a, kind), z0, atol=1e-5)
    v = diffusion_target(z0, eps, a, "v_prediction")
    assert torch.allclose(v, a.sqrt().view(-1, 1, 1, 1) * eps - (1 - a).sqrt().view(-1, 1, 1, 1) * z0)
    with pytest.raises(FDIError, match="prediction type .flow. is not supported"):
        predict_x0(z_t, eps, a, "flow")


def test_loss_goes_down_on_toy_task(toy, tmp_path):
    """25 steps, lr 1e-2: mean loss of the last 5 steps < 0.75 × the first 5 (measured here: ≈ 0.57)."""
    init = tmp_path / "init.safetensors"
    out = tmp_path / "a.safetensors"
    train(_cfg(toy, init, max_steps=1, lr=1e-12))  # (almost) the initial weights, same seed
    res = train(_cfg(toy, out, max_steps=25))
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert all(math.isfinite(x) for x in res.losses) and len(res.losses) == 25
    assert last < 0.75 * first, (first, last, res.losses)
    # every adapter stage learned something: the loss reaches all of them through the UNet hooks
    a0, a1 = FDIAdapter.from_file(init), FDIAdapter.from_file(out)
    moved = {k for k, v in a1.state_dict().items() if not torch.allclose(v, a0.state_dict()[k], atol=1e-6)}
    stages = {k.split(".")[0] for k in moved}
    assert stages == {"conv_in", "levels", "decouple_levels", "guidance_heads", "gates"}, stages
    # the artefact: config, base family, encoder and the training FDI embedded
    assert a1.base_family == res.base_family == "custom-base"
    assert a1.config == tiny_adapter_config() and a1.encoder == "tiny:0123456789abcdef"
    assert a1.fdi is not None and torch.equal(a1.fdi.tokens, FDI.load(toy / "toy.fdi.safetensors").tokens)
    log = (res.run_dir / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss") and len(log) == 26


def test_interrupted_and_resumed_run_equals_uninterrupted(toy, tmp_path):
    kw = dict(max_steps=6, grad_accum=2, checkpoint_every=2, lr=3e-3, lr_scheduler="cosine", lr_warmup_steps=2)
    full = train(_cfg(toy, tmp_path / "full.safetensors", **kw))

    def stop_after_5(done, total):
        if done == 5:  # step 5 done, last checkpoint at step 4
            raise FDIInterrupted("stop")

    part = tmp_path / "part.safetensors"
    with pytest.raises(FDIInterrupted):
        train(_cfg(toy, part, **kw), progress=stop_after_5)
    run_dir = tmp_path / "part-run"
    assert not part.exists()
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 4]
    assert not list(run_dir.glob(".*.tmp"))
    resumed = train(_cfg(toy, part, resume="latest", **kw))
    assert resumed.start_step == 4 and resumed.steps == 6
    assert resumed.losses == pytest.approx(full.losses[4:], abs=1e-6)
    a, b = FDIAdapter.from_file(tmp_path / "full.safetensors").state_dict(), FDIAdapter.from_file(part).state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    # the log was cut back to the checkpoint and continued: one row per step
    steps = [int(r.split(",")[0]) for r in (run_dir / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]

    # resuming the same run with another adapter config is refused, naming the difference
    other = json.loads(tiny_adapter_config().to_json())
    other["res_blocks"] = 2
    with pytest.raises(FDIError, match="different run.*adapter_config"):
        train(
            _cfg(
                toy,
                tmp_path / "x.safetensors",
                checkpoint_dir=str(run_dir),
                resume=str(run_dir / "checkpoint-4"),
                adapter_config=other,
                **kw,
            )
        )


def test_bad_input_fails_before_training(toy, tmp_path):
    with pytest.raises(FDIError, match="not divisible by processes × --grad-accum = 1 × 3"):
        train(_cfg(toy, tmp_path / "a.safetensors", batch_size=4, grad_accum=3, max_steps=1))
    (tmp_path / "file").write_text("x")
    # one resolution rule for both doors (the node's too): a multiple of 64, the UNet's three downsamplings × 8
    for bad in (96, 32, 0):
        with pytest.raises(FDIError, match="must be a multiple of 64"):
            train(_cfg(toy, tmp_path / "a.safetensors", resolution=bad, max_steps=1))
    with pytest.raises(FDIError, match=r"--adam-beta2 must be in \[0, 1\)"):
        train(_cfg(toy, tmp_path / "a.safetensors", adam_beta2=1.0, max_steps=1))
    with pytest.raises(FDIError, match="does not exist"):
        train(_cfg(toy, tmp_path / "missing" / "a.safetensors", max_steps=1))
    with pytest.raises(FDIError, match="does not exist"):
        train(_cfg(toy, tmp_path / "file" / "a.safetensors", max_steps=1))
    with pytest.raises(FDIError, match="must end with '.safetensors'"):
        train(_cfg(toy, tmp_path / "a.pt", max_steps=1))
    (tmp_path / "d0").mkdir(), (tmp_path / "c0").mkdir()
    with pytest.raises(FDIError, match="holds no images"):  # fewer than one pair
        train(
            _cfg(
                toy, tmp_path / "a.safetensors", degraded=str(tmp_path / "d0"), clean=str(tmp_path / "c0"), max_steps=1
            )
        )
    with pytest.raises(FDIError, match="not a training checkpoint"):
        train(_cfg(toy, tmp_path / "a.safetensors", resume=str(tmp_path), max_steps=1))
    with pytest.raises(FDIError, match="--blip2 DIR"):
        train(_cfg(toy, tmp_path / "a.safetensors", fdi=None, max_steps=1))
    wide = json.loads(tiny_adapter_config().to_json())
    wide["channels"] = [320, 640, 1280, 1280]
    with pytest.raises(FDIError, match="encoder widths"):
        train(_cfg(toy, tmp_path / "a.safetensors", adapter_config=wide, max_steps=1))
    assert not list(tmp_path.glob("*-run"))  # nothing was written


def test_cli_with_blip2_pairs_file_and_v_prediction(toy, tmp_path, tiny_sd_v_folder, tiny_blip2_folder, capsys):
    """The command end to end: task FDI from BLIP-2, pairs from a CSV, a v-prediction model, validation."""
    from fdi.cli import main

    shutil.copytree(tiny_blip2_folder, tmp_path / "blip2")
    lst = tmp_path / "pairs.csv"
    lst.write_text("degraded,clean\n" + "".join(f"{toy}/deg/{i:02d}.png,{toy}/clean/{i:02d}.png\n" for i in range(4)))
    out = tmp_path / "v.safetensors"
    argv = [
        "train",
        "--sd",
        str(tiny_sd_v_folder),
        "--blip2",
        str(tmp_path / "blip2"),
        "--pairs-file",
        str(lst),
        "-o",
        str(out),
        "--resolution",
        "64",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--num-workers",
        "0",
        "--adapter-config",
        tiny_adapter_config().to_json(),
        "--validate-every",
        "2",
        "--val-degraded",
        str(toy / "deg"),
        "--val-clean",
        str(toy / "clean"),
        "--val-steps",
        "2",
        "--val-max-images",
        "2",
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    a = FDIAdapter.from_file(out)
    assert (
        a.base_family == "custom-v"
        and a.fdi is not None
        and a.fdi.n_pairs == 4
        and a.encoder.endswith(a.fdi.encoder.split(":")[-1])
    )
    run = tmp_path / "v-run"
    assert (run / "train.fdi.safetensors").is_file() and [s for s, _ in list_checkpoints(run)] == [2]
    val = (run / "val_log.csv").read_text().splitlines()
    assert val[0] == "step,psnr,ssim,psnr_y,ssim_y" and val[1].startswith("2,") and len(val) == 2
    # effective batch that does not divide -> exit 2, one line
    argv[argv.index("-o") + 1] = str(tmp_path / "w.safetensors")
    assert main(argv[:-1] + ["--grad-accum", "4"]) == 2
    assert "not divisible" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_under_torchrun_resume_exactly(toy, tmp_path):
    """The multi-process path (DDP over gloo on the CPU, as `accelerate launch --multi_gpu` uses NCCL):
    2 processes × micro-batch 2, checkpoint at step 2; resuming from it in a second run gives the
    same adapter as the uninterrupted 4-step run."""
    import os
    import subprocess
    import sys

    def run(out, extra=()):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "fdi",
            "train",
            "--sd",
            str(toy / "sd"),
            "--fdi",
            str(toy / "toy.fdi.safetensors"),
            "--degraded",
            str(toy / "deg"),
            "--clean",
            str(toy / "clean"),
            "-o",
            str(out),
            "--resolution",
            "64",
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "--num-workers",
            "0",
            "--adapter-config",
            tiny_adapter_config().to_json(),
            "--checkpoint-every",
            "2",
            "--device",
            "cpu",
            "--lr",
            "1e-3",
            "--quiet",
            *extra,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    out = run(tmp_path / "full.safetensors")
    assert out.count("wrote ") == 1  # one process reports
    shutil.copytree(tmp_path / "full-run", tmp_path / "part-run")
    shutil.rmtree(tmp_path / "part-run" / "checkpoint-4")
    assert sorted(p.name for p in (tmp_path / "part-run" / "checkpoint-2").iterdir()) == [
        "adapter.safetensors",
        "optimizer.safetensors",
        "rng-0.safetensors",
        "rng-1.safetensors",
        "state.json",
    ]
    run(tmp_path / "part.safetensors", ["--resume", "latest"])
    a = FDIAdapter.from_file(tmp_path / "full.safetensors").state_dict()
    b = FDIAdapter.from_file(tmp_path / "part.safetensors").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_ctrl_c_leaves_loadable_checkpoints(toy, tmp_path):
    """A real SIGINT in the middle of a run: exit code 130, no adapter file, every checkpoint complete."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fdi.files import load_safetensors

    out = tmp_path / "c.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "fdi",
        "train",
        "--sd",
        str(toy / "sd"),
        "--fdi",
        str(toy / "toy.fdi.safetensors"),
        "--degraded",
        str(toy / "deg"),
        "--clean",
        str(toy / "clean"),
        "-o",
        str(out),
        "--resolution",
        "64",
        "--max-steps",
        "1000",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--checkpoint-every",
        "1",
        "--adapter-config",
        tiny_adapter_config().to_json(),
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    # a job started in the background by a shell without job control (`cmd &` in a script) inherits SIGINT
    # *ignored*, and Python then never installs its Ctrl-C handler: give the child the default, as a terminal does
    p = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run = tmp_path / "c-run"
    deadline = time.time() + 240
    while time.time() < deadline and len(list_checkpoints(run)) < 3 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "--resume latest" in err and not out.exists()
    found = list_checkpoints(run)
    assert len(found) >= 3
    for step, ckpt in found:
        state = json.loads((ckpt / "state.json").read_text())
        assert state["step"] == step
        assert FDIAdapter.from_file(ckpt / "adapter.safetensors").fdi is not None
        load_safetensors(ckpt / "optimizer.safetensors")


def _saved_bytes_of(fn):
    """Bytes autograd saves for the backward while ``fn()`` runs (outside checkpoints: what checkpointing frees)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_gradient_checkpointing_acts_with_the_unet_in_eval(toy, tmp_path):
    """--gradient-checkpointing frees the UNet's saved activations on every diffusers the package supports: the
    UNet is in eval(), where diffusers < 0.32 ignored enable_gradient_checkpointing() (measured with 0.30.3 on
    main's code: the same bytes on and off)."""
    sizes = {}
    for on in (False, True):
        cfg = _cfg(toy, tmp_path / f"gc{on}.safetensors", max_steps=1, resolution=64, gradient_checkpointing=on)
        sizes[on] = _saved_bytes_of(lambda cfg=cfg: train(cfg))
    print("saved bytes of one step, checkpointing off/on:", sizes)
    assert sizes[True] <= 0.5 * sizes[False]


def test_fp16_training_stops_after_a_run_of_nonfinite_steps(toy, tmp_path, monkeypatch):
    """fp16: a step whose loss is not finite is skipped, a run of them stops with a clear error (before: the
    finite check was skipped under fp16 and the run 'finished' untrained)."""
    import fdi.training.run as train_mod
    from fdi.training.precision import MAX_NONFINITE_SCALED

    real = train_mod.diffusers_predictor
    calls = [0]

    def nan_after_two(unet, embeds, dtype):
        predict = real(unet, embeds, dtype)

        def wrapped(z, t, guidance):
            calls[0] += 1
            out = predict(z, t, guidance)
            return out * float("nan") if calls[0] > 2 else out

        return wrapped

    from accelerate.state import AcceleratorState

    monkeypatch.setattr(train_mod, "diffusers_predictor", nan_after_two)
    out = tmp_path / "fp16.safetensors"
    cfg = _cfg(toy, out, max_steps=20, mixed_precision="fp16", device="cpu", checkpoint_every=1)
    n = MAX_NONFINITE_SCALED
    AcceleratorState._reset_state(True)  # accelerate keeps one mixed-precision state per process
    try:
        with pytest.raises(FDIError, match=rf"the loss became nan at step {2 + n} \({n} steps in a row\)"):
            train(cfg)
    finally:
        AcceleratorState._reset_state(True)
    assert calls[0] == 2 + MAX_NONFINITE_SCALED and not out.exists()
    # the last checkpoint holds finite weights (the skipped steps never updated them)
    last = list_checkpoints(out.with_name("fp16-run"))[-1][1]
    assert all(
        torch.isfinite(v).all() for v in FDIAdapter.from_file(last / "adapter.safetensors").state_dict().values()
    )


def test_cli_options_are_the_config_fields():
    """`python -m fdi train` has one option per TrainConfig field (same name, same default): the mapping is
    generic, so a new field without an option fails here (before: 44 fields copied by hand, --adam-epsilon
    and --deterministic missing)."""
    from dataclasses import fields

    from fdi.cli import build_parser
    from fdi.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--sd", "m", "-o", "a.safetensors"])
    missing = [f.name for f in fields(TrainConfig) if not hasattr(args, f.name)]
    assert missing == []
    assert config_from_args(args) == TrainConfig(sd="m", output="a.safetensors")
    args = build_parser().parse_args(
        [
            "train",
            "--sd",
            "m",
            "-o",
            "a.safetensors",
            "--adam-epsilon",
            "1e-6",
            "--deterministic",
            "--adam-beta2",
            "0.9",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.adam_epsilon, cfg.deterministic, cfg.adam_beta2) == (1e-6, True, 0.9)


def test_deterministic_runs_and_a_resumed_run_agree(toy, tmp_path):
    """--deterministic: deterministic kernels during the run (the global setting restored after), two straight
    4-step runs and a 2 + 2 resumed run agree to 1e-7 (the full-width version: tests/cli/test_determinism.py)."""
    kw = dict(max_steps=4, batch_size=2, deterministic=True, checkpoint_every=2)
    seen = []

    def probe(done, total):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.deterministic))

    runs = [train(_cfg(toy, tmp_path / f"{r}.safetensors", **kw), progress=probe) for r in "ab"]
    assert set(seen) == {(True, True)}
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.mkldnn.deterministic

    def stop_after_2(done, total):
        if done == 3:  # step 3 started from the checkpoint of step 2: stop, then resume from it
            raise FDIInterrupted("stop")

    with pytest.raises(FDIInterrupted):
        train(_cfg(toy, tmp_path / "c.safetensors", **kw), progress=stop_after_2)
    assert not torch.are_deterministic_algorithms_enabled()
    resumed = train(_cfg(toy, tmp_path / "c.safetensors", resume="latest", **kw))
    assert resumed.start_step == 2
    ref = FDIAdapter.from_file(tmp_path / "a.safetensors").state_dict()
    for other in ("b", "c"):
        got = FDIAdapter.from_file(tmp_path / f"{other}.safetensors").state_dict()
        assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-7, other
    init = FDIAdapter.from_file(tmp_path / "a-run" / "checkpoint-2" / "adapter.safetensors").state_dict()
    assert max((ref[k] - init[k]).abs().max().item() for k in ref) > 1e-4  # the last two steps moved the weights
    assert runs[0].losses == runs[1].losses


def test_training_draws_t_in_the_window_and_the_adapter_records_it(toy, tmp_path, monkeypatch, capsys):
    """`--timestep-sampling window` with the last third: every t the run draws lies in [0, 333); the file records
    the window and the sampling; `adapter-info --json` shows them."""
    import fdi.training.step as step_module
    from fdi.cli import main

    drawn = []
    original = step_module.sample_noise

    def recording(z0, num_train_timesteps, gen, sampling):
        noise, t = original(z0, num_train_timesteps, gen, sampling)
        drawn.append(t.clone())
        return noise, t

    monkeypatch.setattr(step_module, "sample_noise", recording)
    out = tmp_path / "late.safetensors"
    train(_cfg(toy, out, max_steps=3, timestep_sampling="window", guidance_start=0.667, guidance_end=1.0))
    t = torch.cat(drawn)
    assert t.numel() == 12 and int(t.min()) >= 0 and int(t.max()) < 333
    a = FDIAdapter.from_file(out)
    assert a.guidance_window == (0.667, 1.0) and a.timestep_sampling == "window"
    assert main(["adapter-info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["guidance_window"] == [0.667, 1.0] and info["timestep_sampling"] == "window"
    # the default: the paper's first third, drawn inside it
    drawn.clear()
    train(_cfg(toy, tmp_path / "default.safetensors", max_steps=2))
    t = torch.cat(drawn)
    assert int(t.min()) >= 667 and int(t.max()) < 1000
    d = FDIAdapter.from_file(tmp_path / "default.safetensors")
    assert d.guidance_window == (0.0, 0.333) and d.timestep_sampling == "window"


def test_a_resume_keeps_the_timestep_sampling_and_old_checkpoints_were_uniform(toy, tmp_path):
    kw = dict(max_steps=2, checkpoint_every=1)
    train(_cfg(toy, tmp_path / "a.safetensors", **kw))
    run_dir = tmp_path / "a-run"
    with pytest.raises(FDIError, match="different run.*timestep_sampling: checkpoint 'window', this run 'cubic'"):
        train(
            _cfg(
                toy,
                tmp_path / "b.safetensors",
                checkpoint_dir=str(run_dir),
                resume="latest",
                timestep_sampling="cubic",
                max_steps=3,
                checkpoint_every=1,
            )
        )
    # a checkpoint from before the sampling was recorded drew t uniformly: --timestep-sampling uniform resumes it
    ckpt = run_dir / "checkpoint-2"
    state = json.loads((ckpt / "state.json").read_text())
    for key in ("timestep_sampling", "guidance_window"):
        del state["signature"][key]
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(FDIError, match="timestep_sampling: checkpoint 'uniform', this run 'window'"):
        train(_cfg(toy, tmp_path / "c.safetensors", checkpoint_dir=str(run_dir), resume="latest", max_steps=3))
    res = train(
        _cfg(
            toy,
            tmp_path / "c.safetensors",
            checkpoint_dir=str(run_dir),
            resume="latest",
            max_steps=3,
            timestep_sampling="uniform",
        )
    )
    assert res.start_step == 2 and res.steps == 3
    assert FDIAdapter.from_file(tmp_path / "c.safetensors").timestep_sampling == "uniform"


def test_window_settings_are_checked_before_training(toy, tmp_path):
    for kw, msg in (
        (dict(guidance_start=0.5, guidance_end=0.5), "--guidance-start 0.5 is not below --guidance-end 0.5"),
        (dict(guidance_end=1.5), "--guidance-start 0.0 and --guidance-end 1.5 must be fractions"),
        (dict(timestep_sampling="cubic", guidance_start=0.667, guidance_end=1.0), "--timestep-sampling cubic"),
    ):
        with pytest.raises(FDIError, match=msg):
            train(_cfg(toy, tmp_path / "x.safetensors", max_steps=1, **kw))
        assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x-run").exists()
