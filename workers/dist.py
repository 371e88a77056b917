"""Join the torch.distributed process group from the standard env vars, with an explicit timeout.

Every collective of a group runs under the group's timeout, so a dead or stuck peer raises an
error after `timeout_s` instead of hanging the job forever (the backends' failure contract).

    RANK, WORLD_SIZE          this process's rank and the group size (default 0 / 1)
    MASTER_ADDR, MASTER_PORT  the rendezvous TCP store on rank 0 (needed when WORLD_SIZE > 1)
    LOCAL_RANK                the CUDA device index on this node (default: RANK)
    HYFLOW_DIST_TIMEOUT_S     default timeout in seconds when none is passed (600)

Backend: gloo on CPU, nccl when CUDA is available.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


def _int_env(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"environment variable {name} is required for torch.distributed")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def device() -> torch.device:
    """The device this rank computes on: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", _int_env("LOCAL_RANK", _int_env("RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(timeout_s: float | None = None, backend: str | None = None) -> tuple[int, int]:
    """Join (or create) the default process group from the env vars; returns (rank, world_size).

    Idempotent: a process that already joined gets its rank back (the timeout is then the one
    it joined with). A single rank without MASTER_PORT gets an in-memory store, so one-process
    runs need no free port.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if timeout_s is None:
        timeout_s = float(os.environ.get("HYFLOW_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    rank, world_size = _int_env("RANK", 0), _int_env("WORLD_SIZE", 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world_size}")
    on_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if on_cuda else "gloo")
    timeout = datetime.timedelta(seconds=timeout_s)
    if on_cuda:
        torch.cuda.set_device(device())
    if world_size == 1 and not os.environ.get("MASTER_PORT"):
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        addr = os.environ.get("MASTER_ADDR")
        port = _int_env("MASTER_PORT", None)
        if not addr:
            raise ValueError("environment variable MASTER_ADDR is required for torch.distributed")
        dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                                world_size=world_size, timeout=timeout)
    return rank, world_size


def destroy() -> None:
    """Leave the process group (no-op when not joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (for MASTER_PORT in tests and local runs)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
