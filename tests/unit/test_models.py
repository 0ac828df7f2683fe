"""fdi.models: the shipped SD 1.5 / SD 2.1 / SDXL configs and tokenizers, single-file family checks, offline loading,
text conditioning (SDXL: as diffusers' StableDiffusionXLPipeline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fdi.checkpoints import V_PRED_PROBE, inspect_single_file
from fdi.conditioning import encode_prompt, encode_text, sdxl_added_cond
from fdi.errors import FDIError
from fdi.models import CONFIG_DIR, family_config_dir, is_sdxl_folder, load_sd
from fdi.tokenizers import END_TOKEN, clip_tokenizer, clip_vocab_and_merges, family_tokenizers, sd2_tokenizer
from tests.sd21_fixture import cache_dir

CROSS_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def test_vocab_is_clips_and_the_tokenizer_pads_like_sd2():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert (
        vocab["!"] == 0
        and vocab["a</w>"] == 320
        and vocab["<|startoftext|>"] == 49406
        and vocab["<|endoftext|>"] == 49407
    )
    comfy = os.environ.get("COMFYUI_DIR")
    ref = Path(comfy or "/nonexistent") / "comfy" / "sd1_tokenizer" / "vocab.json"
    if ref.is_file():  # the full table, against the copy ComfyUI ships
        assert vocab == json.loads(ref.read_text(encoding="utf-8"))
    tok = sd2_tokenizer()
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [0] * 70
    assert tok.model_max_length == 77


@pytest.mark.parametrize(
    "family, pred, size, width, layers",
    [
        ("sd1.5", "epsilon", 64, 768, 12),
        ("sd2.1-base", "epsilon", 64, 1024, 23),
        ("sd2.1-v", "v_prediction", 96, 1024, 23),
        ("sdxl", "epsilon", 128, 2048, 12),
    ],
)
def test_shipped_configs(family, pred, size, width, layers):
    d = family_config_dir(family)
    assert d == CONFIG_DIR / family
    assert json.loads((d / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == pred
    unet = json.loads((d / "unet" / "config.json").read_text())
    assert unet["sample_size"] == size and unet["cross_attention_dim"] == width
    assert unet["use_linear_projection"] == (family != "sd1.5")
    te = json.loads((d / "text_encoder" / "config.json").read_text())
    assert te["num_hidden_layers"] == layers and te["hidden_act"] == (
        "gelu" if family.startswith("sd2") else "quick_gelu"
    )
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler" and (sched["beta_start"], sched["beta_end"]) == (0.00085, 0.012)
    assert sched["steps_offset"] == 1 and not sched["set_alpha_to_one"] and sched["timestep_spacing"] == "leading"
    vae = json.loads((d / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == (0.13025 if family == "sdxl" else 0.18215)
    index = json.loads((d / "model_index.json").read_text())
    assert ("text_encoder_2" in index) == (family == "sdxl") == is_sdxl_folder(d)


def test_family_config_dir_names():
    # the SD 2.1 prediction types still name the SD 2.1 folders (older callers), -v fine-tunes get their base's
    assert family_config_dir("epsilon") == CONFIG_DIR / "sd2.1-base"
    assert family_config_dir("v_prediction") == CONFIG_DIR / "sd2.1-v"
    assert family_config_dir("sdxl-v") == CONFIG_DIR / "sdxl" and family_config_dir("sd1.5-v") == CONFIG_DIR / "sd1.5"
    with pytest.raises(FDIError, match="no configs are shipped for the base family 'custom-base'"):
        family_config_dir("custom-base")


#: parameters of the shipped architectures, counted on the meta device (UNet, VAE, text encoder, text encoder 2)
PARAMS = {
    "sd1.5": (859_520_964, 83_653_863, 123_060_480, None),
    "sd2.1-base": (865_910_724, 83_653_863, 340_387_840, None),
    "sdxl": (2_567_463_684, 83_653_863, 123_060_480, 694_659_840),
}


@pytest.mark.parametrize("family", sorted(PARAMS))
def test_shipped_configs_build_the_real_architectures(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from fdi.restoration import detect_base_family

    d = family_config_dir(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder"))
        text2 = (
            CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(d / "text_encoder_2"))
            if (d / "text_encoder_2").is_dir()
            else None
        )
    count = [sum(p.numel() for p in m.parameters()) if m is not None else None for m in (unet, vae, text, text2)]
    assert tuple(count) == PARAMS[family]
    pred = json.loads((d / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
    assert detect_base_family(unet.config, pred) == family
    if family == "sdxl":  # pooled (1280) + 6 size ids × 256 = the addition embedding's input
        assert unet.add_embedding.linear_1.in_features == text2.config.projection_dim + 6 * 256 == 2816


def test_tokenizers_pad_per_family():
    end = clip_tokenizer(END_TOKEN)
    ids = end("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [49407] * 70
    pads = {arch: [t.pad_token_id for t in family_tokenizers(arch)] for arch in ("sd1", "sd2", "sdxl")}
    assert pads == {"sd1": [49407], "sd2": [0], "sdxl": [49407, 0]}
    with pytest.raises(FDIError, match="not in the CLIP vocabulary"):
        clip_tokenizer("<pad>")


def _header_file(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


UNET = "model.diffusion_model."
CONV_IN = UNET + "input_blocks.0.0.weight"
XL_CROSS_K = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
LABEL = UNET + "label_emb.0.0.weight"
CLIP_L_XL = "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"
CLIP_G_XL = "conditioner.embedders.1.model.ln_final.weight"
CLIP_G_REFINER = "conditioner.embedders.0.model.ln_final.weight"


def _sdxl_header(**over) -> dict:
    """The keys (zero tensors of the real shapes) that tell an SDXL base 1.0 single file; ``over`` replaces or,
    with ``None``, drops some."""
    t = {
        CONV_IN: torch.zeros(320, 4, 3, 3),
        XL_CROSS_K: torch.zeros(640, 2048),
        LABEL: torch.zeros(1280, 2816),
        CLIP_L_XL: torch.zeros(768),
        CLIP_G_XL: torch.zeros(1280),
    }
    t.update(over)
    return {k: v for k, v in t.items() if v is not None}


def test_single_file_family_checks(tmp_path):
    sd15 = _header_file(
        tmp_path / "sd15.safetensors", {CROSS_K: torch.zeros(320, 768), CONV_IN: torch.zeros(320, 4, 3, 3)}
    )
    assert inspect_single_file(sd15) == {"arch": "sd1", "v_prediction": False, "zero_snr": False}
    sd15v = _header_file(tmp_path / "sd15v.safetensors", {CROSS_K: torch.zeros(320, 768), "v_pred": torch.zeros(1)})
    assert inspect_single_file(sd15v) == {"arch": "sd1", "v_prediction": True, "zero_snr": False}
    xl = _header_file(tmp_path / "xl.safetensors", _sdxl_header())
    assert inspect_single_file(xl) == {"arch": "sdxl", "v_prediction": False, "zero_snr": False}
    xlv = _header_file(tmp_path / "xlv.safetensors", _sdxl_header(v_pred=torch.zeros(1)))
    assert inspect_single_file(xlv) == {"arch": "sdxl", "v_prediction": True, "zero_snr": False}
    # ComfyUI's markers as its CheckpointSave writes them (empty tensors); ztsnr counts only beside v_pred
    empty = torch.tensor([])
    xlz = _header_file(tmp_path / "xlz.safetensors", _sdxl_header(v_pred=empty, ztsnr=empty))
    assert inspect_single_file(xlz) == {"arch": "sdxl", "v_prediction": True, "zero_snr": True}
    sd15z = _header_file(
        tmp_path / "sd15z.safetensors", {CROSS_K: torch.zeros(320, 768), "v_pred": empty, "ztsnr": empty}
    )
    assert inspect_single_file(sd15z) == {"arch": "sd1", "v_prediction": True, "zero_snr": True}
    xl_z_only = _header_file(tmp_path / "xlz_only.safetensors", _sdxl_header(ztsnr=empty))
    assert inspect_single_file(xl_z_only) == {"arch": "sdxl", "v_prediction": False, "zero_snr": False}
    # the refiner: OpenCLIP-G as embedder 0, UNet width 384, size conditioning of 2560
    refiner = _header_file(
        tmp_path / "refiner.safetensors",
        _sdxl_header(
            **{
                CONV_IN: torch.zeros(384, 4, 3, 3),
                XL_CROSS_K: torch.zeros(768, 1280),
                LABEL: torch.zeros(1536, 2560),
                CLIP_L_XL: None,
                CLIP_G_XL: None,
                CLIP_G_REFINER: torch.zeros(1280),
            }
        ),
    )
    with pytest.raises(FDIError, match="is the SDXL refiner .* need the SDXL base"):
        inspect_single_file(refiner)
    for name, header in {
        "xl_inpaint": _sdxl_header(**{CONV_IN: torch.zeros(320, 9, 3, 3)}),
        "inpaint": {CROSS_K: torch.zeros(320, 1024), CONV_IN: torch.zeros(320, 9, 3, 3)},
        "sd15_inpaint": {CROSS_K: torch.zeros(320, 768), CONV_IN: torch.zeros(320, 9, 3, 3)},
    }.items():
        with pytest.raises(FDIError, match="9 latent channels"):
            inspect_single_file(_header_file(tmp_path / f"{name}.safetensors", header))
    edm = _header_file(tmp_path / "edm.safetensors", _sdxl_header(edm_mean=torch.zeros(4), edm_std=torch.zeros(4)))
    with pytest.raises(FDIError, match="EDM-schedule SDXL"):
        inspect_single_file(edm)
    wide = _header_file(tmp_path / "w.safetensors", {CROSS_K: torch.zeros(320, 1280)})
    with pytest.raises(FDIError, match="cross-attention width 1280, not SD 1.x"):
        inspect_single_file(wide)
    unclip = _header_file(
        tmp_path / "unclip.safetensors", {CROSS_K: torch.zeros(320, 1024), LABEL: torch.zeros(1280, 2048)}
    )
    with pytest.raises(FDIError, match="unCLIP"):
        inspect_single_file(unclip)
    other = _header_file(tmp_path / "other.safetensors", {"foo": torch.zeros(1)})
    with pytest.raises(FDIError, match="not a Stable Diffusion UNet checkpoint"):
        inspect_single_file(other)
    # the v-prediction probe responds to the weights: std above 0.09 → v, below → epsilon, absent → unknown
    g = torch.Generator().manual_seed(0)
    wide = _header_file(
        tmp_path / "v.safetensors", {CROSS_K: torch.zeros(320, 1024), V_PRED_PROBE: torch.randn(320, generator=g) * 0.2}
    )
    narrow = _header_file(
        tmp_path / "e.safetensors",
        {CROSS_K: torch.zeros(320, 1024), V_PRED_PROBE: torch.randn(320, generator=g) * 0.02},
    )
    unknown = _header_file(tmp_path / "u.safetensors", {CROSS_K: torch.zeros(320, 1024)})
    assert inspect_single_file(wide) == {"arch": "sd2", "v_prediction": True, "zero_snr": False}
    assert inspect_single_file(narrow)["v_prediction"] is False
    assert inspect_single_file(unknown)["v_prediction"] is None
    with pytest.raises(FDIError, match="pass --prediction-type epsilon"):
        load_sd(unknown)
    with pytest.raises(FDIError, match="SDXL refiner"):  # before any loading
        load_sd(refiner, prediction_type="epsilon")
    with pytest.raises(FDIError, match="--prediction-type 'x0'"):
        load_sd(unknown, prediction_type="x0")
    # a header that is not a whole model: diffusers fails, the message names the family the header showed
    for path, title in ((sd15, "SD 1.5"), (xl, "SDXL"), (sd15v, "SD 1.5 \\(v-prediction\\)")):
        with pytest.raises(FDIError, match=f"could not load .* check that it is an {title} checkpoint"):
            load_sd(path)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from tests.tiny_bases import build_tiny_sd15, build_tiny_sdxl

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bases")
    return {"sd15": build_tiny_sd15(root / "sd15"), "sdxl": build_tiny_sdxl(root / "sdxl")}


def test_load_tiny_sd15_and_sdxl_folders(tiny_folders, tmp_path):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sd15 = load_sd(tiny_folders["sd15"])
    assert sd15.text_encoder_2 is None and sd15.tokenizer_2 is None and isinstance(sd15.text_encoder, CLIPTextModel)
    assert sd15.tokenizer.pad_token == END_TOKEN and not sd15.unet.config.use_linear_projection
    assert sd15.family == "custom-base"  # narrow widths: no shipped family
    xl = load_sd(tiny_folders["sdxl"])
    assert isinstance(xl.text_encoder, CLIPTextModel) and isinstance(xl.text_encoder_2, CLIPTextModelWithProjection)
    assert (xl.tokenizer.pad_token, xl.tokenizer_2.pad_token) == (END_TOKEN, "!")
    assert xl.unet.config.addition_embed_type == "text_time" and xl.unet.config.down_block_types[0] == "DownBlock2D"
    assert xl.family == "custom-base" and xl.source == "sdxl"
    assert load_sd(tiny_folders["sdxl"], prediction_type="v_prediction").family == "custom-v"
    # a refiner-like folder (no first text encoder) and a half-copied SDXL folder are refused by name
    import shutil

    refiner = shutil.copytree(tiny_folders["sdxl"], tmp_path / "refiner")
    shutil.rmtree(refiner / "text_encoder")
    with pytest.raises(FDIError, match="SDXL refiner folder"):
        load_sd(refiner)
    half = shutil.copytree(tiny_folders["sdxl"], tmp_path / "half")
    shutil.rmtree(half / "tokenizer_2")
    with pytest.raises(FDIError, match="is not a diffusers SDXL folder \\(missing tokenizer_2\\)"):
        load_sd(half)


def test_encode_text_equals_diffusers_sdxl_encode_prompt(tiny_folders):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_bases import XL_CONTEXT, XL_PROJECTION

    xl = load_sd(tiny_folders["sdxl"])
    pipe = StableDiffusionXLPipeline(
        vae=xl.vae,
        text_encoder=xl.text_encoder,
        text_encoder_2=xl.text_encoder_2,
        tokenizer=xl.tokenizer,
        tokenizer_2=xl.tokenizer_2,
        unet=xl.unet,
        scheduler=xl.scheduler,
        add_watermarker=False,
    )
    got = {}
    for prompt in ("a photo of rain", "clean snow"):
        ref, _, ref_pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        mine = encode_text(xl, prompt)
        assert mine.embeds.shape == (1, 16, XL_CONTEXT) and mine.pooled.shape == (1, XL_PROJECTION)
        assert (mine.embeds - ref).abs().max() <= 1e-6 * ref.abs().max()
        assert (mine.pooled - ref_pooled).abs().max() <= 1e-6 * ref_pooled.abs().max()
        modules = encode_text((xl.text_encoder, xl.tokenizer, xl.text_encoder_2, xl.tokenizer_2), prompt)
        assert torch.equal(modules.embeds, mine.embeds) and torch.equal(modules.pooled, mine.pooled)
        got[prompt] = mine
    a, b = got.values()  # the conditioning responds to the prompt
    assert (a.embeds - b.embeds).abs().max() > 0.1 * a.embeds.abs().max()
    assert (a.pooled - b.pooled).abs().max() > 0.1 * a.pooled.abs().max()
    half = encode_text(xl, "a photo of rain", dtype=torch.float16)
    assert half.embeds.dtype == half.pooled.dtype == torch.float16


def test_encode_text_sd15_is_encode_prompt(tiny_folders):
    sd15 = load_sd(tiny_folders["sd15"])
    cond = encode_text(sd15, "a photo of rain")
    assert cond.pooled is None
    assert torch.equal(cond.embeds, encode_prompt(sd15.text_encoder, sd15.tokenizer, "a photo of rain"))
    assert not torch.equal(cond.embeds, encode_text(sd15, "clean snow").embeds)


def test_sdxl_added_cond_is_diffusers(tiny_folders):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_bases import XL_PROJECTION

    xl = load_sd(tiny_folders["sdxl"])
    pipe = StableDiffusionXLPipeline(
        vae=xl.vae,
        text_encoder=xl.text_encoder,
        text_encoder_2=xl.text_encoder_2,
        tokenizer=xl.tokenizer,
        tokenizer_2=xl.tokenizer_2,
        unet=xl.unet,
        scheduler=xl.scheduler,
        add_watermarker=False,
    )
    cond = encode_text(xl, "a photo of rain")
    added = sdxl_added_cond(cond.pooled, 48, 72, batch=2, dtype=torch.float32, device=torch.device("cpu"))
    ref = pipe._get_add_time_ids((48, 72), (0, 0), (48, 72), torch.float32, text_encoder_projection_dim=XL_PROJECTION)
    assert torch.equal(added["time_ids"], ref.repeat(2, 1)) and added["time_ids"][0].tolist() == [48, 72, 0, 0, 48, 72]
    assert torch.equal(added["text_embeds"], cond.pooled.repeat(2, 1))
    # the UNet takes them, and its output responds to the size conditioning
    x = torch.randn(2, 4, 6, 9, generator=torch.Generator().manual_seed(0))
    ctx = cond.embeds.repeat(2, 1, 1)
    with torch.no_grad():
        out = xl.unet(x, 500, ctx, added_cond_kwargs=added).sample
        other = xl.unet(x, 500, ctx, added_cond_kwargs=sdxl_added_cond(cond.pooled, 64, 64, 2)).sample
    assert out.shape == x.shape and (out - other).abs().max() > 1e-3 * out.abs().max()
    with pytest.raises(FDIError, match="expected \\[1, D\\] or \\[2, D\\]"):
        sdxl_added_cond(cond.pooled.repeat(3, 1), 64, 64, 2)


#: ᾱ at t = 981 (the first of 50 DDIM steps) on SD's zero-terminal-SNR schedule, and at the last step: ComfyUI 0.33's
#: ``ModelSamplingDiscrete(zsnr=True)`` (its σ table in float32, ᾱ = 1 / (σ² + 1)); plain SD: 0.0057755 at t = 981
ZSNR_ALPHA_981, ZSNR_ALPHA_LAST = 6.886572e-05, 4.8973452e-08
MARKERS = {"none": (), "v_pred": ("v_pred",), "v_pred+ztsnr": ("v_pred", "ztsnr"), "ztsnr alone": ("ztsnr",)}


@pytest.fixture(scope="module")
def tiny_single_files(tiny_folders, tmp_path_factory):
    """Per tiny base (``sd15``, ``sdxl``) and marker set of :data:`MARKERS`: a single file of the tiny folder."""
    from tests.tiny_bases import write_tiny_single_file

    root = tmp_path_factory.mktemp("single")
    return {
        (base, name): write_tiny_single_file(tiny_folders[base], root / f"{base}_{i}.safetensors", markers)
        for base in ("sd15", "sdxl")
        for i, (name, markers) in enumerate(MARKERS.items())
    }


def _plain_alphas() -> torch.Tensor:
    from tests.tiny_sd import tiny_scheduler

    return tiny_scheduler().alphas_cumprod


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
@pytest.mark.parametrize("markers", sorted(MARKERS))
def test_single_file_markers_set_the_prediction_type_and_the_schedule(tiny_folders, tiny_single_files, base, markers):
    """A single file's ``v_pred`` key makes it v-prediction, ``ztsnr`` beside it the zero-terminal-SNR schedule, for
    SD 1.5 and SDXL alike, through the real loading code (``--sd-config``: the tiny folder); the weights are the
    folder's; the schedule survives the restoration pipeline's rebuild of the scheduler."""
    from diffusers import DDIMScheduler

    from fdi.pipeline import FDIRestorationPipeline

    parts = load_sd(tiny_single_files[base, markers], config=tiny_folders[base])
    folder = load_sd(tiny_folders[base])
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(parts, name), getattr(folder, name)
        if b is None:
            assert a is None
            continue
        a, b = a.state_dict(), b.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    v = "v_pred" in MARKERS[markers]
    assert parts.scheduler.config.prediction_type == ("v_prediction" if v else "epsilon")
    assert parts.family == ("custom-v" if v else "custom-base")
    alphas = parts.scheduler.alphas_cumprod.double()
    if markers == "v_pred+ztsnr":
        assert abs(alphas[981] / ZSNR_ALPHA_981 - 1) < 1e-6 and abs(alphas[-1] / ZSNR_ALPHA_LAST - 1) < 1e-6
        assert bool((alphas[1:] < alphas[:-1]).all()) and abs(alphas[0] / _plain_alphas()[0] - 1) < 1e-6
        # diffusers' own rescale (float32, ᾱ_T = 0) agrees where float32 keeps the digits
        ref = DDIMScheduler.from_config(parts.scheduler.config, trained_betas=None, rescale_betas_zero_snr=True)
        ref_alphas = ref.alphas_cumprod.double()
        assert float(((alphas[:990] - ref_alphas[:990]).abs() / ref_alphas[:990]).max()) < 3e-6
    else:
        assert torch.equal(parts.scheduler.alphas_cumprod, _plain_alphas())
    pipe = FDIRestorationPipeline.from_pretrained(tiny_single_files[base, markers], config=tiny_folders[base])
    assert torch.equal(pipe.scheduler.alphas_cumprod, parts.scheduler.alphas_cumprod)
    assert pipe.prediction_type == parts.scheduler.config.prediction_type
    # --prediction-type epsilon reads any of them as ComfyUI reads an SD 1.5 file: epsilon on the plain schedule
    eps = load_sd(tiny_single_files[base, markers], config=tiny_folders[base], prediction_type="epsilon")
    assert eps.family == "custom-base" and torch.equal(eps.scheduler.alphas_cumprod, _plain_alphas())


def test_the_shipped_families_take_the_markers_rule(tmp_path):
    """The rule on full-size SD 1.5 / SDXL headers with the shipped configs (a single file without --sd-config), from
    the header alone (:func:`fdi.models.single_file_scheduler`, what :func:`load_sd` loads the file with)."""
    from diffusers import DDIMScheduler

    from fdi.models import declared_scheduler, single_file_scheduler, zero_snr_betas

    empty = torch.tensor([])
    headers = {"sd1.5": {CROSS_K: torch.zeros(320, 768), CONV_IN: torch.zeros(320, 4, 3, 3)}, "sdxl": _sdxl_header()}
    for family, header in headers.items():
        base = DDIMScheduler.from_pretrained(family_config_dir(family), subfolder="scheduler")
        assert base.config.prediction_type == "epsilon"
        files = {
            name: _header_file(tmp_path / f"{family}_{name}.safetensors", {**header, **{m: empty for m in markers}})
            for name, markers in MARKERS.items()
        }
        for name, path in files.items():
            sched = single_file_scheduler(path)
            v = "v_pred" in MARKERS[name]
            assert sched.config.prediction_type == ("v_prediction" if v else "epsilon"), (family, name)
            if name == "v_pred+ztsnr":
                assert abs(float(sched.alphas_cumprod[981]) / ZSNR_ALPHA_981 - 1) < 1e-6
                assert abs(float(sched.alphas_cumprod[-1]) / ZSNR_ALPHA_LAST - 1) < 1e-6
            else:
                assert torch.equal(sched.alphas_cumprod, base.alphas_cumprod), (family, name)
        eps = single_file_scheduler(files["v_pred+ztsnr"], prediction_type="epsilon")
        assert eps.config.prediction_type == "epsilon" and torch.equal(eps.alphas_cumprod, base.alphas_cumprod)
        assert declared_scheduler(base, None, zero_snr=True) is base  # zero SNR only under v-prediction
        assert len(zero_snr_betas(base.config)) == 1000
    bad = DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(FDIError, match="cannot rescale a 'squaredcos_cap_v2' beta schedule"):
        zero_snr_betas(bad.config)


def test_a_half_precision_file_loads_for_fp32_through_its_own_dtype(tiny_folders, tmp_path):
    """An fp16 file asked for in fp32 is built in fp16 and upcast (exact; the load's peak is then the file plus
    fp16 modules, not plus fp32 ones): every tensor equals the folder's rounded to fp16, in fp32."""
    from fdi.files import read_header
    from fdi.models import half_storage_dtype
    from tests.tiny_bases import write_tiny_single_file

    path = write_tiny_single_file(tiny_folders["sdxl"], tmp_path / "h.safetensors", ("v_pred",), torch.float16)
    infos, _ = read_header(path)
    assert half_storage_dtype(infos, torch.float32) == torch.float16  # the empty marker tensors do not count
    assert half_storage_dtype(infos, torch.float16) == torch.float16
    mixed = {**infos, "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    assert half_storage_dtype(mixed, torch.float32) == torch.float32
    assert half_storage_dtype({"x": {"dtype": "BF16", "shape": [2]}}, torch.float32) == torch.bfloat16
    parts = load_sd(path, config=tiny_folders["sdxl"])
    folder = load_sd(tiny_folders["sdxl"])
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(parts, name).state_dict(), getattr(folder, name).state_dict()
        for k in a:
            if b[k].is_floating_point():
                assert a[k].dtype == torch.float32 and torch.equal(a[k], b[k].half().float()), (name, k)


SINGLE = cache_dir() / "checkpoints" / "sd21_random_v1.safetensors"
FOLDER = cache_dir() / "diffusers" / "sd21_random"


@pytest.mark.slow
@pytest.mark.skipif(
    not (SINGLE.is_file() and FOLDER.is_dir()),
    reason="needs the cached full-size SD 2.1 fixture (tests/comfyui/test_e2e.py builds it)",
)
def test_single_file_without_configs_equals_the_diffusers_folder(monkeypatch):
    """ComfyUI's CheckpointSave output, loaded with the shipped configs and tokenizer, offline, holds
    exactly the weights of the diffusers folder it was made from."""
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    single = load_sd(SINGLE)
    folder = load_sd(FOLDER)
    assert single.scheduler.config.prediction_type == "epsilon" and single.source == SINGLE.name
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
        assert set(a) == set(b)
        assert all(torch.equal(a[k].float(), b[k].float()) for k in a), name
    p = "a watercolour of a harbour"
    assert single.tokenizer(p).input_ids == folder.tokenizer(p).input_ids
    v = load_sd(SINGLE, prediction_type="v_prediction")
    assert v.scheduler.config.prediction_type == "v_prediction" and v.unet.config.sample_size == 96


BASES = cache_dir() / "checkpoints" / "fdi-bases"
#: file name → (family, parameters of unet, vae, text_encoder, text_encoder_2); the files: random weights in
#: ComfyUI's single-file layout (CheckpointSave), built by the ComfyUI base-family tests
BASE_FILES = {
    "sd15_random_v1.safetensors": ("sd1.5", PARAMS["sd1.5"]),
    "sdxl_random_v1.safetensors": ("sdxl", PARAMS["sdxl"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BASE_FILES))
def test_single_files_of_the_real_layouts_load_with_the_shipped_configs(name, monkeypatch):
    """An SD 1.5 / SDXL single file as ComfyUI writes it loads offline with the shipped configs and tokenizers:
    the family, every parameter (none left on meta), and tensors that equal the file's under the known renames."""
    import huggingface_hub
    from safetensors import safe_open

    path = BASES / name
    if not path.is_file():
        pytest.skip(f"needs {path} (built by the ComfyUI base-family tests)")

    def no_network(*a, **k):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    family, params = BASE_FILES[name]
    parts = load_sd(path, dtype=torch.float16)
    assert parts.family == family and parts.scheduler.config.prediction_type == "epsilon"
    modules = (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2)
    assert tuple(sum(p.numel() for p in m.parameters()) if m is not None else None for m in modules) == params
    assert not any(p.is_meta for m in modules if m is not None for p in m.parameters())
    te = parts.text_encoder.text_model if hasattr(parts.text_encoder, "text_model") else parts.text_encoder
    prefix = "conditioner.embedders.0.transformer." if family == "sdxl" else "cond_stage_model.transformer."
    pairs = {
        "model.diffusion_model.input_blocks.0.0.weight": parts.unet.conv_in.weight,
        "model.diffusion_model.out.2.weight": parts.unet.conv_out.weight,
        "first_stage_model.encoder.conv_in.weight": parts.vae.encoder.conv_in.weight,
        prefix + "text_model.embeddings.token_embedding.weight": te.embeddings.token_embedding.weight,
    }
    if family == "sdxl":
        pairs["model.diffusion_model.label_emb.0.0.weight"] = parts.unet.add_embedding.linear_1.weight
        assert (parts.tokenizer.pad_token, parts.tokenizer_2.pad_token) == (END_TOKEN, "!")
    with safe_open(str(path), framework="pt") as fh:
        for key, tensor in pairs.items():
            ref = fh.get_tensor(key)
            assert ref.float().std() > 0 and torch.equal(tensor.detach().half(), ref.half()), key
