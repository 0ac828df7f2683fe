"""The degradation classifier's nodes and 'FDI Restore (auto)', executed in-process with ComfyUI's modules.

'Detect Degradations (FDI)' with the tiny BLIP-2 gives the numbers of ``python -m fdi classify predict`` on the same
image files and of :meth:`fdi.classifier.DegradationClassifier.predict`; it shows them on the node, drives ComfyUI's
progress bar and stops on Cancel; a classifier of another encoder is refused before the Q-Former loads.
'FDI Restore (auto)' is checked on what it hands FDIRestore's machinery (``run_adapter``, ``apply_guidance``,
``restore``, replaced by recorders as in tests/comfyui/test_window_nodes.py): the adapters, weights, order and windows
of :func:`fdi.auto.decide` for each image, images restored apart when they decide apart, an image with nothing
detected unchanged; labels no adapter carries and detections of another batch are refused. Then the two doors on the
full-size random SD 2.1 fixture (about a minute): the nodes and ``python -m fdi restore --auto`` decide alike and give
the same pixels, composite and progressive, to FDIRestore's tolerance against ``restore``. Needs ``COMFYUI_DIR``.
"""

from __future__ import annotations

import comfyui_harness as harness
import pytest

COMFYUI_DIR = harness.comfyui_dir()

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: these tests import a ComfyUI checkout "
        "(run with COMFYUI_DIR=/path/to/ComfyUI under ComfyUI's Python)",
    ),
]

DETECT = """
import importlib, os
import numpy as np
import comfy.model_management as mm
import comfy.utils
from PIL import Image
from tiny_blip2 import TINY_TOKENS, TINY_WIDTH, build_tiny_blip2

fdi_nodes = sys.modules[name + ".nodes.fdi_nodes"]
cn = sys.modules[name + ".nodes.classifier_nodes"]
common = sys.modules[name + ".nodes.common"]
cli = importlib.import_module(name + ".fdi.cli")
Classifier = importlib.import_module(name + ".fdi.classifier").DegradationClassifier
pool_tokens = importlib.import_module(name + ".fdi.classifier").pool_tokens
FDI = importlib.import_module(name + ".fdi.instruction").FDI
blip = folder_paths.get_folder_paths("blip2")[0] + "/tiny"
build_tiny_blip2(blip)
clf_dir = folder_paths.get_folder_paths("fdi_classifiers")[0]
tmp = folder_paths.get_input_directory()
q = fdi_nodes.FDIQFormerLoader.execute("tiny", "fp32")[0]
config = dict(pooling="mean+flat", hidden=16, num_tokens=TINY_TOKENS, width=TINY_WIDTH)
torch.manual_seed(3)
clf = Classifier(("haze", "noise", "rainstreak"), q.module.fingerprint, config, torch.tensor([0.3, 0.5, 0.7]))
for p in clf.mlp.parameters():
    p.data.normal_(0, 0.1)
other = Classifier(("haze",), "blip2-other:0123456789abcdef", config)
other.save(clf_dir + "/other.clf.safetensors")
result = {}

# three photos as LoadImage gives them (8-bit files read back / 255), and the same files for the command line
rng = np.random.default_rng(0)
paths, batch = [], []
for i in range(3):
    arr = (rng.random((40, 36, 3)) * 255).astype(np.uint8)
    paths.append(os.path.join(tmp, f"photo{i}.png"))
    Image.fromarray(arr).save(paths[-1])
    batch.append(torch.from_numpy(arr).float() / 255.0)
image = torch.stack(batch)
# standardised on these photos, as training would on its own: probabilities away from 0 and 1
features = pool_tokens(q.module.encode(image.permute(0, 3, 1, 2)), config["pooling"])
clf.feature_mean.copy_(features.mean(0))
clf.feature_std.copy_(features.std(0) + 1e-6)
clf.save(clf_dir + "/mixed.clf.safetensors")
result["choices"] = common.classifier_files()

calls = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append([value, total]))
loaded = cn.FDIClassifierLoader.execute("mixed.clf.safetensors")[0]
out = cn.FDIDetectDegradations.execute(q, loaded, image)
found, scores = out[0], json.loads(out[1])
result["progress"] = calls[:]
result["node"] = [dict(p) for p in found.probabilities]
result["node_detected"] = [list(d) for d in found.detected]
result["scores"] = scores
result["ui"] = out.ui.as_dict()["text"][0]
# the library's predict, one image at a time, and the command line on the files
lib = Classifier.load(clf_dir + "/mixed.clf.safetensors")
result["library"] = [lib.predict(q.module, image[i : i + 1].permute(0, 3, 1, 2))[0] for i in range(3)]
result["library_detected"] = [lib.detected(p) for p in result["library"]]
js = os.path.join(tmp, "predict.json")
result["cli_rc"] = cli.main(["classify", "predict", "--blip2", blip, "--classifier", clf_dir + "/mixed.clf.safetensors",
                             "--image", *paths, "--json", js, "--batch-size", "1", "--device", "cpu"])
result["cli"] = json.load(open(js))["images"]

errors = {}
def error(key, f, *args):
    try:
        f(*args)
        errors[key] = None
    except Exception as exc:
        errors[key] = type(exc).__name__ + ": " + str(exc)

mm.unload_all_models()
error("other_encoder", cn.FDIDetectDegradations.execute, q, cn.FDIClassifierLoader.execute("other.clf.safetensors")[0],
      image)
result["qformer_loaded_after_refusal"] = any(m.model is q.patcher for m in mm.current_loaded_models)
error("not_a_classifier", cn.FDIDetectDegradations.execute, q, FDI(torch.zeros(8, 32), encoder="e:1", n_pairs=1), image)
error("missing_file", cn.FDIClassifierLoader.execute, "gone.clf.safetensors")
open(clf_dir + "/broken.clf.safetensors", "wb").write(b"not a safetensors file")
error("corrupt_file", cn.FDIClassifierLoader.execute, "broken.clf.safetensors")
result["errors"] = errors
mm.interrupt_current_processing(True)
try:
    cn.FDIDetectDegradations.execute(q, loaded, image)
    result["interrupted"] = False
except mm.InterruptProcessingException:
    result["interrupted"] = True
finally:
    mm.interrupt_current_processing(False)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def detect(tmp_path_factory):
    base = tmp_path_factory.mktemp("classifier_nodes")
    boot = dict(pack_name="comfyui_fdi_classifier_nodes", tests_path=True, threads=1)
    return harness.run_json(harness.script(DETECT, COMFYUI_DIR, base, **boot), base, timeout=600)


def test_the_loader_lists_classifier_files_of_the_models_folder(detect):
    assert {"mixed.clf.safetensors", "other.clf.safetensors"} <= set(detect["choices"])


def test_detection_gives_the_numbers_of_the_library_and_the_command_line(detect):
    node, lib = detect["node"], detect["library"]
    cli = [detect["cli"][f"photo{i}.png"] for i in range(3)]
    assert [list(p) for p in node] == [["haze", "noise", "rainstreak"]] * 3
    for i in range(3):
        for label in node[i]:
            assert node[i][label] == lib[i][label], (i, label)  # the same function on the same tensor
            assert abs(node[i][label] - cli[i]["probabilities"][label]) <= 1e-6, (i, label)
    assert detect["node_detected"] == detect["library_detected"] == [c["detected"] for c in cli]
    # the numbers are not all alike, so the equalities above mean something
    assert max(abs(node[0][k] - node[1][k]) for k in node[0]) > 0.05
    assert all(0.01 < p < 0.99 for probs in node for p in probs.values()), node


def test_detection_shows_the_scores_and_gives_them_as_json(detect):
    scores, text = detect["scores"], detect["ui"]
    assert [s["image"] for s in scores] == [0, 1, 2]
    assert [s["probabilities"] for s in scores] == detect["node"]
    assert scores[0]["thresholds"] == pytest.approx({"haze": 0.3, "noise": 0.5, "rainstreak": 0.7})
    lines = text.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        p = detect["node"][i]
        assert line.startswith(f"image {i + 1}: haze {p['haze']:.2f} ")
        assert line.endswith("detected: " + (", ".join(detect["node_detected"][i]) or "nothing"))


def test_detection_drives_progress_and_stops_on_cancel(detect):
    values = [v for v, _ in detect["progress"]]
    assert all(t == 3 for _, t in detect["progress"]) and values[0] == 0 and values[-1] == 3
    assert values == sorted(values)
    assert detect["interrupted"] is True


def test_bad_classifier_inputs_give_clear_errors(detect):
    errors = detect["errors"]
    assert errors["other_encoder"].startswith("FDIError: the classifier was trained on encoder blip2-other:")
    assert "use the BLIP-2 it was trained with" in errors["other_encoder"]
    assert detect["qformer_loaded_after_refusal"] is False  # refused before the Q-Former was loaded
    assert errors["not_a_classifier"] == (
        "FDIError: the 'classifier' input is a FDI; connect 'Load Degradation Classifier (FDI)'"
    )
    assert "is not in models/fdi_classifiers" in errors["missing_file"]
    assert errors["corrupt_file"].startswith("FDIError:") and "broken.clf.safetensors" in errors["corrupt_file"]


RESTORE = """
import importlib
import comfy.model_management as mm
from tiny_sd import make_adapter
an = sys.modules[name + ".nodes.auto_nodes"]
cn = sys.modules[name + ".nodes.classifier_nodes"]
common = sys.modules[name + ".nodes.common"]
auto = importlib.import_module(name + ".fdi.auto")
FDI = importlib.import_module(name + ".fdi.instruction").FDI
fdi = FDI(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)), encoder="blip2-tiny:abcd", n_pairs=2)
THRESHOLDS = {"dehaze": 0.5, "denoise": 0.4, "derain": 0.5}
log = []
an.run_adapter = lambda handle, f, images: ("guidance", handle.name, f is handle.module.fdi, list(images.shape))
an.apply_guidance = lambda model, g, strength, start, end: model + [[g[1], strength, start, end]]


def fake_restore(model, vae, images, guide, positive, negative, steps, inversion_steps, cfg, tile, overlap):
    guided = guide(images)
    log.append({"guided": guided, "n": images.shape[0], "mean": float(images.mean()), "steps": steps})
    return (images * 0.5 + 0.25).permute(0, 2, 3, 1)  # a known change: an IMAGE [B, H, W, 3]


an.restore = fake_restore


def adapter(label, window=None, with_fdi=True):
    a = make_adapter()
    a.label, a.guidance_window, a.fdi = label, window, (fdi if with_fdi else None)
    return common.ModelHandle(a, None, label + ".safetensors")


def found(*probabilities):
    return cn.Degradations(tuple(probabilities), THRESHOLDS, tuple(() for _ in probabilities))


derain, dehaze, style = adapter("derain"), adapter("dehaze", (0.0, 0.5)), adapter("painting")
images = torch.rand(3, 16, 24, 3, generator=torch.Generator().manual_seed(1))
both = {"dehaze": 0.6, "denoise": 0.1, "derain": 0.9}
none = {"dehaze": 0.2, "denoise": 0.1, "derain": 0.3}
out = {}
for mode in ("composite", "progressive"):
    log.clear()
    res = an.FDIRestoreAuto.execute([], None, images, found(both, none, both), dehaze, [], mode, 3, 2, 0.8, 1.0,
                                    adapter_2=style, adapter_3=derain)
    img, decision = res[0], json.loads(res[1])
    want = [auto.decide(p, THRESHOLDS, ["dehaze", "painting", "derain"], mode).to_json() for p in (both, none, both)]
    out[mode] = {
        "log": [dict(e, guided=e["guided"]) for e in log],
        "decision": decision,
        "want": want,
        "ui": res.ui.as_dict()["text"][0],
        "unchanged": bool(torch.equal(img[1], images[1])),
        "restored": float((img[[0, 2]] - (images[[0, 2]] * (0.5 if mode == "composite" else 0.25) +
                                          (0.25 if mode == "composite" else 0.375))).abs().max()),
        "shape": list(img.shape),
    }

errors = {}
def error(key, *args, **kw):
    try:
        an.FDIRestoreAuto.execute([], None, *args, **kw)
        errors[key] = None
    except Exception as exc:
        errors[key] = type(exc).__name__ + ": " + str(exc)

base = ([], "composite", 2, 2, 1.0, 1.0)
error("no_matching_adapter", images[:1], found(both), style, *base)
error("count", images[:2], found(both), derain, *base)
error("two_alike", images[:1], found(both), derain, *base, adapter_2=adapter("derain"))
error("no_fdi", images[:1], found(both), adapter("derain", with_fdi=False), *base)
error("not_detections", images[:1], fdi, derain, *base)
log.clear()
mm.interrupt_current_processing(True)
try:
    an.FDIRestoreAuto.execute([], None, images[:1], found(both), derain, *base)
    out["interrupted"] = False
except mm.InterruptProcessingException:
    out["interrupted"] = True
finally:
    mm.interrupt_current_processing(False)
out["restored_after_cancel"] = len(log)
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def restore(tmp_path_factory):
    base = tmp_path_factory.mktemp("auto_restore_nodes")
    boot = dict(pack_name="comfyui_fdi_auto_nodes", tests_path=True, library_path=True, threads=1)
    return harness.run_json(harness.script(RESTORE, COMFYUI_DIR, base, **boot), base, timeout=600)


def test_composite_guides_one_restoration_with_the_decisions_adapters_and_weights(restore):
    r = restore["composite"]
    # images 0 and 2 decide alike and restore together; image 1 (nothing detected) is not restored
    assert [e["n"] for e in r["log"]] == [2]
    # the decision's adapters in its order, each at strength x probability, in its recorded window (derain records
    # none: the paper's first third)
    assert r["log"][0]["guided"] == [
        ["derain.safetensors", 0.8 * 0.9, 0.0, 0.333],
        ["dehaze.safetensors", 0.8 * 0.6, 0.0, 0.5],
    ]
    assert r["log"][0]["steps"] == 3
    assert r["unchanged"] is True and r["restored"] < 1e-6 and r["shape"] == [3, 16, 24, 3]


def test_progressive_restores_with_one_adapter_after_the_other_most_probable_first(restore):
    r = restore["progressive"]
    assert [e["guided"] for e in r["log"]] == [
        [["derain.safetensors", 0.8, 0.0, 0.333]],
        [["dehaze.safetensors", 0.8, 0.0, 0.5]],
    ]
    # the second stage restores the first one's output (x -> 0.5 x + 0.25 twice = 0.25 x + 0.375)
    assert r["log"][1]["mean"] == pytest.approx(r["log"][0]["mean"] * 0.5 + 0.25, abs=1e-6)
    assert r["unchanged"] is True and r["restored"] < 1e-6


def test_the_decision_is_the_librarys_and_says_why(restore):
    for mode in ("composite", "progressive"):
        r = restore[mode]
        assert [{k: v for k, v in d.items() if k != "image"} for d in r["decision"]] == r["want"]
        assert [d["image"] for d in r["decision"]] == [0, 1, 2]
        lines = r["ui"].splitlines()
        assert lines[1].startswith("image 2: no degradation detected") and "unchanged" in lines[1]
        assert lines[0].startswith(f"image 1: detected derain 0.90, dehaze 0.60: {mode} restoration with derain")
        assert "never auto-picked (label not the classifier's): painting" in lines[0]


def test_bad_restore_inputs_give_clear_errors_and_cancel_stops(restore):
    errors = restore["errors"]
    assert errors["no_matching_adapter"].startswith("FDIError: no adapter's label matches a classifier label")
    assert "dehaze, denoise, derain" in errors["no_matching_adapter"] and "'painting'" in errors["no_matching_adapter"]
    assert errors["count"].startswith("FDIError: 'degradations' holds 1 image(s) but 'image' has 2")
    assert "both carry label 'derain'" in errors["two_alike"]
    assert "embeds no FDI" in errors["no_fdi"] and "derain.safetensors" in errors["no_fdi"]
    assert "connect 'Detect Degradations (FDI)'" in errors["not_detections"]
    assert restore["interrupted"] is True and restore["restored_after_cancel"] == 0


PARITY = """
import gc
import numpy as np
import comfy.sd
from PIL import Image
from tiny_blip2 import TINY_TOKENS, TINY_WIDTH, build_tiny_blip2
from sd21_fixture import random_adapter
from fdi.classifier import DegradationClassifier
from fdi.cli import main
from fdi.encoder import QFormerEncoder
from fdi.instruction import FDI

fdi_nodes = sys.modules[name + ".nodes.fdi_nodes"]
gn = sys.modules[name + ".nodes.guidance_nodes"]
cn = sys.modules[name + ".nodes.classifier_nodes"]
an = sys.modules[name + ".nodes.auto_nodes"]
base = {base!r}
blip = folder_paths.get_folder_paths("blip2")[0] + "/tiny"
build_tiny_blip2(blip)
fp = QFormerEncoder.from_pretrained(blip).fingerprint
adapters = []
for seed, label in enumerate(("derain", "dehaze")):
    a = random_adapter(TINY_WIDTH, TINY_TOKENS, seed=seed)
    a.label, a.encoder = label, fp
    f = FDI(torch.randn(TINY_TOKENS, TINY_WIDTH, generator=torch.Generator().manual_seed(seed)), encoder=fp, n_pairs=1)
    path = folder_paths.get_folder_paths("fdi_adapters")[0] + f"/{{label}}.safetensors"
    a.save(path, fdi=f)
    adapters.append(path)
clf = DegradationClassifier(["dehaze", "derain"], fp, dict(pooling="mean", hidden=0, num_tokens=TINY_TOKENS,
                            width=TINY_WIDTH), thresholds=torch.tensor([0.5, 0.5]))
clf.mlp[0].weight.data.zero_()
clf.mlp[0].bias.data.copy_(torch.logit(torch.tensor([0.6, 0.8])))
clf_path = folder_paths.get_folder_paths("fdi_classifiers")[0] + "/auto.clf.safetensors"
clf.save(clf_path)
yy, xx = np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 64), indexing="ij")
arr = (np.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy, 0.6 - 0.3 * xx * yy], -1) * 255).astype(np.uint8)
Image.fromarray(arr).save(base + "/photo.png")
image = torch.from_numpy(arr).float()[None] / 255.0

q = fdi_nodes.FDIQFormerLoader.execute("tiny", "fp32")[0]
found = cn.FDIDetectDegradations.execute(q, cn.FDIClassifierLoader.execute("auto.clf.safetensors")[0], image)[0]
handles = [gn.FDIAdapterLoader.execute(f"{{label}}.safetensors")[0] for label in ("derain", "dehaze")]
model, clip, vae = comfy.sd.load_checkpoint_guess_config({ckpt!r}, output_vae=True, output_clip=True)[:3]
positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
out = {{}}
for mode in ("composite", "progressive"):
    with torch.inference_mode():
        res = an.FDIRestoreAuto.execute(model, vae, image, found, handles[1], positive, mode, 4, 4, 1.0, 1.0,
                                        adapter_2=handles[0])
    np.save(base + f"/node_{{mode}}.npy", (res[0].clamp(0, 1) * 255).round().numpy().astype(np.uint8))
    out[mode] = json.loads(res[1])
del model, clip, vae
gc.collect()
for mode in ("composite", "progressive"):
    args = ["restore", "--sd", {diffusers!r}, "--auto", clf_path, "--blip2", blip, "--adapter", adapters[1],
            "--adapter", adapters[0], "--image", base + "/photo.png", "-o", base + f"/cli_{{mode}}", "--mode", mode,
            "--steps", "4", "--inversion-steps", "4", "--device", "cpu", "--dtype", "fp32", "--quiet"]
    out["rc_" + mode] = main(args)
    out["cli_" + mode] = json.load(open(base + f"/cli_{{mode}}/photo.json"))
print(json.dumps(out))
"""


def test_automatic_restore_equals_restore_auto_of_the_command_line(tmp_path):
    """The same classifier, adapters, image file and settings through 'Detect Degradations (FDI)' + 'FDI Restore
    (auto)' on the full-size random SD 2.1 single file and ``python -m fdi restore --auto`` on its diffusers folder:
    the same decision, and pixels as close as FDIRestore and ``restore`` are (max ≤ 4/255, mean ≤ 1/255; test_e2e)."""
    import numpy as np
    import sd21_fixture
    from PIL import Image

    ckpt = sd21_fixture.checkpoint_path()
    diffusers = sd21_fixture.cache_dir() / "diffusers" / sd21_fixture.FIXTURE_NAME
    if not ckpt.is_file() or not diffusers.is_dir():
        pytest.skip("the SD 2.1 fixture is not built yet (tests/comfyui/test_e2e.py builds it)")
    body = PARITY.format(base=str(tmp_path), ckpt=str(ckpt), diffusers=str(diffusers))
    boot = dict(pack_name="comfyui_fdi_auto_parity", tests_path=True, library_path=True, threads=2)
    result = harness.run_json(harness.script(body, COMFYUI_DIR, tmp_path, **boot), tmp_path, timeout=1800)
    photo = np.asarray(Image.open(tmp_path / "photo.png").convert("RGB"), dtype=np.int16)
    node, cli = {}, {}
    for mode in ("composite", "progressive"):
        assert result["rc_" + mode] == 0
        decision = {k: v for k, v in result[mode][0].items() if k != "image"}
        assert decision == {k: v for k, v in result["cli_" + mode].items() if k != "input"}
        assert [(a["label"], a["weight"]) for a in decision["adapters"]] == (
            [("derain", pytest.approx(0.8)), ("dehaze", pytest.approx(0.6))]
            if mode == "composite"
            else [("derain", 1.0), ("dehaze", 1.0)]
        )
        node[mode] = np.load(tmp_path / f"node_{mode}.npy")[0].astype(np.int16)
        cli[mode] = np.asarray(Image.open(tmp_path / f"cli_{mode}" / "photo.png").convert("RGB"), dtype=np.int16)
        d = np.abs(node[mode] - cli[mode])
        print(f"{mode}: max {d.max()}, mean {d.mean():.3f}")
        assert d.max() <= 4 and d.mean() <= 1, (mode, d.max(), d.mean())
        assert np.abs(node[mode] - photo).mean() > 2  # restored, not passed through
    assert np.abs(node["composite"] - node["progressive"]).mean() > 2  # the two modes differ: the bound means something
