"""The guidance window in the nodes, in a fresh interpreter with ComfyUI's modules and no model: which window
FDIRestore and FDIApplyGuidance guide (the adapter's recorded one by default, the widgets for files that record none
and with 'custom'), workflows saved before the window inputs existed (their positional widget values loaded into the
new schemas as the frontend loads them), and FDITrainAdapter's window inputs reaching its training settings.

The sampling and the training are replaced by recorders (``apply_guidance``, ``restore``, ``_train``): what is
checked is the translation of the nodes' inputs; the restorations themselves are tests/comfyui/test_parity.py's.
"""

from __future__ import annotations

import comfyui_harness as harness
import pytest

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not harness.comfyui_dir(),
        reason="COMFYUI_DIR is not set: run under ComfyUI's Python with COMFYUI_DIR=/path/to/ComfyUI",
    ),
]

#: nodes as workflows saved before 2026-12 hold them: the committed templates' values, and a user's own windows
OLD_WIDGETS = {
    "restore_sdxl": ("FDIRestore", [50, 50, 1.0, 0.333, 1.0, 1024, 128]),
    "user_restore": ("FDIRestore", [30, 30, 0.8, 0.5, 1.0, 0, 128]),
    "mixed_composite": ("FDIApplyGuidance", [0.6, 0.0, 0.333]),
    "user_apply": ("FDIApplyGuidance", [1.0, 0.25, 0.75]),
    "train_from_clean_photos": ("FDITrainAdapter", [200, 0.0001, 1, 512, 0, "fixed", True, "bf16", 0.1]),
    "train_with_preview": ("FDITrainAdapter", [200, 0.0001, 1, 512, 0, "fixed", True, "bf16", 0.1, 5]),
}

SCRIPT = """
import logging
import torch
from tiny_sd import make_adapter
from workflows.builder.schema import widget_layout
gn = sys.modules[name + ".nodes.guidance_nodes"]
tn = sys.modules[name + ".nodes.train_nodes"]
common = sys.modules[name + ".nodes.common"]
memory = sys.modules[name + ".fdi.training.memory"]
FDI = importlib.import_module(name + ".fdi.instruction").FDI  # the pack's own class, as the nodes check it
fdi = FDI(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)), encoder="blip2-tiny:abcd", n_pairs=2)
OLD = json.loads(sys.argv[1])
out = {"windows": {}, "old": {}, "settings": {}, "errors": {}, "warnings": []}


class Warnings(logging.Handler):
    def emit(self, record):
        out["warnings"].append(record.getMessage())


logging.getLogger().addHandler(Warnings(level=logging.WARNING))
seen = []
gn.apply_guidance = lambda model, guidance, strength, start, end: seen.append([start, end]) or model
gn.run_adapter = lambda handle, fdi, images: None
gn.restore = lambda model, vae, images, guide, *a, **k: guide(images)


def adapter(window, label):
    a = make_adapter()
    a.label, a.guidance_window = label, window
    return common.ModelHandle(a, None, label)


def guidance(window, label):
    return common.GuidanceHandle(None, (32, 32, 64, 64), "custom-base", guidance_window=window, display_name=label)


def window(node, handle, **widgets):
    seen.clear()
    if node == "FDIRestore":
        image = torch.zeros(1, 64, 64, 3)
        gn.FDIRestore.execute(None, None, image, handle, [], fdi=fdi, **widgets)
    else:
        gn.FDIApplyGuidance.execute(None, handle, **widgets)
    return seen[-1]


def load_old(node, values):
    # the frontend's LGraphNode.configure: saved values to the widgets in order, the rest keep their defaults
    info = getattr(gn, node, None) or getattr(tn, node)
    layout = widget_layout(info.GET_NODE_INFO_V1())
    specs = {**info.GET_NODE_INFO_V1()["input"]["required"], **info.GET_NODE_INFO_V1()["input"].get("optional", {})}
    loaded = {}
    for i, (wname, _, opts, kind) in enumerate(layout):
        if kind == "value":
            loaded[wname] = values[i] if i < len(values) else specs[wname][1]["default"]
    return loaded


make = {"FDIRestore": adapter, "FDIApplyGuidance": guidance}
late = (0.667, 1.0)
for node in make:
    start, end = ("guidance_start", "guidance_end") if node == "FDIRestore" else ("start_percent", "end_percent")
    base = dict(steps=2, inversion_steps=2, strength=1.0, cfg=1.0) if node == "FDIRestore" else dict(strength=1.0)
    w = {**base, start: 0.25, end: 0.75}
    out["windows"][node] = {
        "old_file": window(node, make[node](None, "old"), **w),
        "late_file": window(node, make[node](late, "late"), **w),
        "old_file_custom": window(node, make[node](None, "old"), guidance_window="custom", **w),
        "late_file_custom": window(node, make[node](late, "late"), guidance_window="custom", **w),
        "late_file_inside": window(node, make[node](late, "late"), guidance_window="custom",
                                   **{**w, start: 0.7, end: 0.9}),
    }
    try:
        window(node, make[node](late, "late"), guidance_window="sideways", **w)
    except Exception as exc:
        out["errors"][node] = str(exc)
for key, (node, values) in OLD.items():
    loaded = load_old(node, values)
    out["old"][key] = loaded
    if node in make:
        out["windows"][key] = [window(node, make[node](None, "old"), **loaded), window(node, make[node](late, "late"),
                               **loaded)]


def fake_train(model, clip, vae, fdi, previous, pairs, settings, *rest):
    out["settings"][current] = [settings.timestep_sampling, settings.guidance_start, settings.guidance_end]
    return make_adapter(), memory.MemoryTrainResult(steps=1, losses=[1.0])


tn._train = fake_train
images = torch.rand(1, 64, 64, 3)
train = dict(steps=1, learning_rate=1e-4, batch_size=1, resolution=64, seed=0, gradient_checkpointing=False,
             training_dtype="fp32", recon_weight=0.1, degraded=images, clean=images)
for current, extra in (("defaults", {}), ("old_workflow", {k: v for k, v in load_old("FDITrainAdapter",
                       OLD["train_from_clean_photos"][1]).items() if k in ("timestep_sampling", "guidance_start",
                       "guidance_end")}), ("given", dict(timestep_sampling="cubic", guidance_start=0.0,
                       guidance_end=0.5))):
    tn.FDITrainAdapter.execute(None, None, None, fdi, **train, **extra)
current = "refused"
try:
    tn.FDITrainAdapter.execute(None, None, None, fdi, **train, timestep_sampling="cubic", guidance_start=0.667,
                               guidance_end=1.0)
except Exception as exc:
    out["errors"]["FDITrainAdapter"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    import json

    base = tmp_path_factory.mktemp("window_nodes")
    boot = dict(pack_name="comfyui_fdi_window_nodes", tests_path=True, library_path=True, threads=1)
    code = harness.script(SCRIPT, harness.comfyui_dir(), base, **boot)
    return harness.run_json(code, base, timeout=600, args=(json.dumps(OLD_WIDGETS),))


@pytest.mark.parametrize("node", ["FDIRestore", "FDIApplyGuidance"])
def test_the_nodes_guide_the_recorded_window_by_default_and_the_widgets_when_asked(result, node):
    """'from adapter': a file recording (0.667, 1) guides it whatever the widgets; a file recording none guides the
    widgets (what the node did before). 'custom': the widgets, with one console warning for the file whose trained
    window they leave."""
    w = result["windows"][node]
    assert w["old_file"] == [0.25, 0.75] and w["late_file"] == [0.667, 1.0]
    assert w["old_file_custom"] == w["late_file_custom"] == [0.25, 0.75] and w["late_file_inside"] == [0.7, 0.9]
    names = ("guidance_start", "guidance_end") if node == "FDIRestore" else ("start_percent", "end_percent")
    title = "FDI Restore" if node == "FDIRestore" else "Apply FDI Guidance"
    leaving = [m for m in result["warnings"] if m.startswith(title)]
    assert leaving == [
        f"{title}: adapter late was trained to guide steps 0.667..1 of sampling; {names[0]} 0.25 {names[1]} 0.75 "
        "makes it guide 0.25..0.75, outside the window it learned"
    ]
    assert "guidance_window must be one of from adapter, custom, got 'sideways'" in result["errors"][node]


def test_workflows_saved_before_the_window_inputs_load_and_guide_as_they_did(result):
    """The saved values go to the same widgets as before (the new inputs come last and take their defaults), and an
    adapter file that records no window (every adapter such a workflow was made with) is guided in the saved
    window: the templates' first third, a user's own (0, 0.5) or (0.25, 0.75). A newer file guides its own window."""
    old = result["old"]
    assert old["restore_sdxl"] == dict(
        steps=50,
        inversion_steps=50,
        strength=1.0,
        guidance_end=0.333,
        cfg=1.0,
        tile_size=1024,
        tile_overlap=128,
        guidance_window="from adapter",
        guidance_start=0.0,
    )
    assert old["user_apply"] == dict(strength=1.0, start_percent=0.25, end_percent=0.75, guidance_window="from adapter")
    w = result["windows"]
    assert w["restore_sdxl"] == [[0.0, 0.333], [0.667, 1.0]]
    assert w["user_restore"] == [[0.0, 0.5], [0.667, 1.0]]
    assert w["mixed_composite"] == [[0.0, 0.333], [0.667, 1.0]]
    assert w["user_apply"] == [[0.25, 0.75], [0.667, 1.0]]


def test_the_trainers_window_inputs_reach_its_settings(result):
    """FDITrainAdapter: the new inputs come last (an old workflow's values stay where they were) and reach
    TrainSettings (which the trained adapter's file records); a window cubic sampling cannot serve is refused."""
    old = result["old"]["train_from_clean_photos"]
    assert [old[k] for k in ("steps", "learning_rate", "seed", "training_dtype", "recon_weight")] == [
        200,
        0.0001,
        0,
        "bf16",
        0.1,
    ]
    assert (old["timestep_sampling"], old["guidance_start"], old["guidance_end"]) == ("window", 0.0, 0.333)
    assert old["preview_every"] == 0 and result["old"]["train_with_preview"] == {**old, "preview_every": 5}
    settings = result["settings"]
    assert settings["defaults"] == settings["old_workflow"] == ["window", 0.0, 0.333]
    assert settings["given"] == ["cubic", 0.0, 0.5]
    assert "refused" not in settings
    assert "cubic weights the first, noisiest steps" in result["errors"]["FDITrainAdapter"]
