"""Boot a real ComfyUI with this pack: the one harness of the tests and ``tools/build_help.py``.

Three ways, all reading a ComfyUI checkout (``COMFYUI_DIR``) and writing nothing under it:

* :func:`boot_code` + :func:`run_json`: a fresh interpreter imports ComfyUI as ``--cpu`` with a
  temporary ``--base-directory`` and loads the pack the way ComfyUI loads a custom-node folder
  (``spec_from_file_location`` with the folder as the package path, then ``comfy_entrypoint``);
  the caller's code runs after that and prints one JSON line;
* :func:`import_comfyui`: ComfyUI's modules in this interpreter (``--cpu``), for checks that need
  ComfyUI's classes but not the pack's loading;
* :class:`ComfyServer`: ``main.py --cpu --force-fp32`` on a free loopback port (or on the machine's GPU, with
  ComfyUI's default memory management), with API helpers.

No pytest here: the tests add ``tools/`` to ``sys.path`` (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: the module name ComfyUI gives a custom-node folder ``custom_nodes/comfyui-fdi``
PACK_NAME = "custom_nodes.comfyui-fdi"
SERVER_TIMEOUT = 180
PROMPT_TIMEOUT = 900


def comfyui_dir() -> str:
    """The ComfyUI checkout the tests use (``COMFYUI_DIR``), or ``""`` when none is set."""
    return os.environ.get("COMFYUI_DIR", "")


# ------------------------------------------------------------------------------------------------ fresh interpreter

_IMPORT_COMFYUI = """
import asyncio, importlib, importlib.util, json, os, sys
sys.path.insert(0, {comfy!r})
{extra_paths}
import comfy.cli_args
comfy.cli_args.args.cpu = True
{base_line}
for _flag, _value in {flags!r}.items():
    setattr(comfy.cli_args.args, _flag, _value)
"""

_LOAD_PACK = """
import folder_paths
import torch
{threads_line}
name = {pack_name!r}
spec = importlib.util.spec_from_file_location(name, {init!r}, submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
extension = asyncio.run(pack.comfy_entrypoint())
"""


def boot_code(
    comfyui: str,
    base: str | Path | None,
    *,
    pack_name: str = PACK_NAME,
    flags: dict | None = None,
    tests_path: bool = False,
    library_path: bool = False,
    threads: int | None = None,
    load_pack: bool = True,
) -> str:
    """Python source that boots ComfyUI from ``comfyui`` in a fresh interpreter, then (``load_pack``) loads the pack.

    ComfyUI's arguments: ``--cpu``, ``base`` as ``--base-directory`` (``None``: not set), then ``flags``
    (``{"fp16_unet": True, ...}``: set before ComfyUI's model management is imported). ``tests_path`` puts
    ``tests/`` second on ``sys.path`` (the builders); ``library_path`` puts the repository root last (the library
    as plain ``fdi``, after ComfyUI so that its ``nodes`` comes first). ``threads``: ``torch.set_num_threads``.
    Afterwards the code has ``asyncio, importlib, json, os, sys, comfy`` in scope and, with the pack, ``folder_paths,
    torch``, ``name`` (the pack's module name; its modules are ``name + ".nodes.fdi_nodes"`` ...), ``pack`` and
    ``extension`` (what ``comfy_entrypoint`` returned).
    """
    extra = []
    if tests_path:
        extra.append(f"sys.path.insert(1, {str(TESTS)!r})")
    if library_path:
        extra.append(f"sys.path.append({str(ROOT)!r})")
    code = _IMPORT_COMFYUI.format(
        comfy=str(comfyui),
        extra_paths="\n".join(extra),
        base_line="" if base is None else f"comfy.cli_args.args.base_directory = {str(base)!r}",
        flags=dict(flags or {}),
    )
    if load_pack:
        code += _LOAD_PACK.format(
            threads_line="" if threads is None else f"torch.set_num_threads({int(threads)})",
            pack_name=pack_name,
            init=str(ROOT / "__init__.py"),
            root=str(ROOT),
        )
    return code


def script(body: str, comfyui: str, base: str | Path | None, **boot) -> str:
    """:func:`boot_code` followed by ``body`` (dedented): a whole program for :func:`run_python`."""
    return boot_code(comfyui, base, **boot) + textwrap.dedent(body)


def run_python(code: str, cwd: str | Path | None, timeout: float, python: str = sys.executable, args=()):
    """Run ``code`` in a fresh ``python -c`` (its ``sys.argv[1:]``: ``args``) in ``cwd`` (``None``: this one); the
    finished ``subprocess.CompletedProcess`` (text)."""
    return subprocess.run(
        [python, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=None if cwd is None else str(cwd),
    )


def run_json(code: str, cwd: str | Path | None, timeout: float, stderr_chars: int = 3000, args=()) -> dict:
    """:func:`run_python`, which must exit 0 (else ``AssertionError`` with the end of its stderr); the JSON value of
    the last line it printed."""
    proc = run_python(code, cwd, timeout, args=args)
    assert proc.returncode == 0, proc.stderr[-stderr_chars:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ this interpreter


def import_comfyui(comfyui: str, flags: dict | None = None):
    """ComfyUI's ``comfy`` package from ``comfyui`` in this interpreter, set up as ``--cpu`` (first on ``sys.path``,
    before this repository's ``nodes/``), with ``comfy.model_management``, ``comfy.sd`` and
    ``comfy.supported_models`` imported."""
    sys.path.insert(0, str(comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # like main.py --cpu: fp32 on the CPU, whatever GPU the machine has
    for flag, value in (flags or {}).items():
        setattr(comfy.cli_args.args, flag, value)
    import comfy.model_management  # noqa: F401 - device setup reads the args
    import comfy.sd
    import comfy.supported_models

    return comfy


# ------------------------------------------------------------------------------------------------ server


def link_pack(base: Path) -> Path:
    """``base/custom_nodes/comfyui-fdi`` as a symlink to this repository (``custom_nodes`` is made); the link."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "comfyui-fdi"
    link.symlink_to(ROOT, target_is_directory=True)
    return link


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_message(entry: dict) -> str:
    """The ``execution_error`` of a ``/history`` entry as ``node type: exception type: message`` (``""``: none)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}"
    return ""


def node(class_type: str, **inputs) -> dict:
    """One node of an API-format graph."""
    return {"class_type": class_type, "inputs": inputs}


class ComfyServer:
    """A ComfyUI ``main.py --cpu --force-fp32`` process on a loopback port, with API helpers.

    ``base`` is its ``--base-directory`` (the log goes to ``base/comfyui.log``); ``extra_yaml`` an
    ``--extra-model-paths-config``. ``--force-fp32``: the SD 2.1 fixture's weights are fp16, and without it ComfyUI
    keeps them in fp16 on the CPU and casts every layer at every step. ``gpu=True`` leaves both flags out: ComfyUI
    picks its device and memory management as a user's would (dynamic VRAM on an NVIDIA GPU).
    """

    def __init__(self, base: Path, extra_yaml: Path | None = None, comfyui: str | None = None, gpu: bool = False):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        cmd = [
            os.environ.get("COMFYUI_PYTHON", sys.executable),
            "main.py",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(base),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
        ]
        if not gpu:
            cmd += ["--cpu", "--force-fp32"]
        if extra_yaml is not None:
            cmd += ["--extra-model-paths-config", str(extra_yaml)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=comfyui or comfyui_dir(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        import requests

        deadline = time.time() + SERVER_TIMEOUT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start in {SERVER_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        import requests

        return self.proc.poll() is None and requests.get(f"{self.url}/system_stats", timeout=10).ok

    def object_info(self) -> dict:
        import requests

        return requests.get(f"{self.url}/object_info", timeout=60).json()

    def submit(self, graph: dict):
        import requests

        r = requests.post(f"{self.url}/prompt", json={"prompt": graph, "client_id": uuid.uuid4().hex}, timeout=60)
        return r.status_code, r.json()

    def run(self, graph: dict, timeout: float = PROMPT_TIMEOUT) -> dict:
        """Queue ``graph`` and return its ``/history`` entry once it has finished (success or error)."""
        import requests

        status, body = self.submit(graph)
        assert status == 200, f"prompt refused: {json.dumps(body)[:2000]}"
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = requests.get(f"{self.url}/history/{pid}", timeout=30).json()
            if pid in h and h[pid].get("status", {}).get("completed") is not None:
                if h[pid]["status"].get("status_str") in ("success", "error"):
                    return h[pid]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running a prompt:\n{self.log_tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s:\n{self.log_tail()}")

    def run_ok(self, graph: dict) -> dict:
        entry = self.run(graph)
        assert entry["status"]["status_str"] == "success", f"{error_message(entry)}\n{self.log_tail(30)}"
        return entry

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.log.close()
