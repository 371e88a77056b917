"""Shared fixtures: the test environment, a tiny random-init model, one Ray cluster per session."""
from __future__ import annotations

import os

# Set before anything imports torch / ray / vllm (see ../shared/reference/stack.md).
for _k, _v in {
    "OMP_NUM_THREADS": "1", "TORCH_COMPILE_DISABLE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "VLLM_HOST_IP": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "RAY_DEDUP_LOGS": "0", "RAY_AUTH_MODE": "disabled",
}.items():
    os.environ.setdefault(_k, _v)

from pathlib import Path

import pytest

import tests.tiny as tiny


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama (hidden 64, 2 heads of 32, 1 KV head, tied embeddings) with the SmolLM2
    tokenizer, random-init with a fixed seed, saved as an HF folder."""
    return tiny.build(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session, on loopback, small object store, with Ray's
    default resources for this machine (its CPU count), the same as the CLI's: a recipe that fits
    here fits a user's `hyflow train` on the same machine."""
    import ray
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False,
                 object_store_memory=512 * 1024**2, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    yield ray
    ray.shutdown()
