"""`Worker`: the base class of every role that runs inside a Ray actor of a `WorkerGroup`.

The group sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the actor's
environment before the worker is built; the worker only reads them. Data parallelism defaults to
"every rank is its own data-parallel shard"; a subclass with tensor/pipeline parallelism overrides
`dp_rank` / `dp_size` / `is_output_rank` so that DP_SPLIT sends one chunk per data-parallel group
and collects one answer per chunk. Nothing here touches torch.distributed (see workers/dist.py).
"""
from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


class Worker:
    """Rank bookkeeping shared by all worker roles (actor, critic, reference, rollout...)."""

    # Read from the environment on each access (cheap), so a subclass that forgets to call
    # super().__init__() still sees the right ranks.
    def __init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is outside WORLD_SIZE={self.world_size}")

    @property
    def rank(self) -> int:
        return _env_int("RANK", 0)

    @property
    def world_size(self) -> int:
        return _env_int("WORLD_SIZE", 1)

    @property
    def local_rank(self) -> int:
        return _env_int("LOCAL_RANK", 0)

    @property
    def dp_rank(self) -> int:
        """Which DP_SPLIT chunk this rank receives."""
        return self.rank

    @property
    def dp_size(self) -> int:
        """How many chunks DP_SPLIT cuts a batch into."""
        return self.world_size

    @property
    def is_output_rank(self) -> bool:
        """Whether the driver collects this rank's DP_SPLIT output (one rank per dp_rank must say yes)."""
        return True
