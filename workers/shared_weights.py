"""Same-node weight transport: one shared-memory file the trainer ranks write and the engines read.

Used by `workers.weight_sync.SharedMemoryWeightSync` (config `weight_sync.transport: shm`, or `auto`
when every trainer rank and engine share one node). Compared with the object-store path (gather
each tensor on every rank, `ray.put` on rank 0, a copy out of the store in every engine), a sync
here moves each byte once on the trainer side: every rank copies its own FSDP shard straight into
its rows of the file, with no collective (a LoRA merge all-gathers only the small `lora_A`), and the
engines load from views of the mapped file (no deserialisation, no second copy).

Lifecycle:
    layout = engine.plan_shared()                    # plan_layout (HF tensors one after another) or,
                                                     # vLLM-CPU, plan_regions (the engine's fused layout)
    create_buffer(layout)                            # one worker on the node: a 0600 file in /dev/shm
    views = tensor_views(layout)                     # writers and readers: HF name -> tensor view
    written = backend.write_shared(views, aliases)   # every trainer rank: (name, first element, count)
    check_tiling(layout, [written per rank])         # driver: each element of each tensor written once
    remove_buffer(layout)                            # at shutdown

The file stays between syncs (mapping it again each time would page-fault the whole model in
again); it costs one copy of the weights in the engine's dtype, in tmpfs: summed RSS counts its
pages in every process that touched them, summed PSS once (bench/grpo_vs_trl.py reports both). A driver killed
outright leaves the file behind; every other exit removes it (`Workers.shutdown`).

Failure contract: `create_buffer` raises OSError naming the path when /dev/shm lacks the room;
`check_tiling` raises WeightSyncError naming the tensor whose elements were missed or written
twice, before any engine loads the buffer.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field

import torch

ALIGN = 64  # bytes: every tensor starts on a cache line
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class SharedLayout:
    path: str
    nbytes: int
    dtype: torch.dtype
    entries: dict          # HF name -> (byte offset, shape)
    aliases: dict          # alias HF name -> the name it shares storage with (a tied output layer)
    regions: dict = field(default_factory=dict)  # engine parameter -> (byte offset, shape), see plan_regions

    def numel(self, name: str) -> int:
        return torch.Size(self.entries[name][1]).numel()


def plan_layout(shapes: dict[str, tuple[int, ...]], aliases: dict[str, str], dtype: torch.dtype,
                directory: str = SHM_DIR) -> SharedLayout:
    """Offsets for every tensor the engine holds (aliases excluded), in name order, aligned."""
    entries, off = {}, 0
    size = torch.empty((), dtype=dtype).element_size()
    for name in sorted(n for n in shapes if n not in aliases):
        entries[name] = (off, tuple(shapes[name]))
        off += -(-torch.Size(shapes[name]).numel() * size // ALIGN) * ALIGN
    path = os.path.join(directory, f"hyflow-weights-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    return SharedLayout(path, max(off, ALIGN), dtype, entries, dict(aliases))


def plan_regions(regions: dict[str, tuple[int, ...]], where: dict[str, tuple[str, int, tuple[int, ...]]],
                 aliases: dict[str, str], dtype: torch.dtype, directory: str = SHM_DIR) -> SharedLayout:
    """A layout in the engine's own parameter layout: `regions` (engine parameter -> its loadable
    shape, e.g. a fused qkv weight) laid out aligned, and each HF tensor (`where`: HF name ->
    (engine parameter, first row, HF shape)) a run of rows inside its region, so the engine can use
    a region as its weight without copying or re-stacking it."""
    size = torch.empty((), dtype=dtype).element_size()
    placed, off = {}, 0
    for key in sorted(regions):
        placed[key] = (off, tuple(regions[key]))
        off += -(-torch.Size(regions[key]).numel() * size // ALIGN) * ALIGN
    entries = {}
    for name, (key, row0, shape) in where.items():
        start, full = placed[key]
        row_bytes = torch.Size(full[1:]).numel() * size
        if tuple(shape[1:]) != tuple(full[1:]) or row0 + shape[0] > full[0]:
            raise ValueError(f"HF tensor {name!r} {tuple(shape)} does not fit rows {row0}.. of {key} {full}")
        entries[name] = (start + row0 * row_bytes, tuple(shape))
    path = os.path.join(directory, f"hyflow-weights-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    return SharedLayout(path, max(off, ALIGN), dtype, entries, dict(aliases), placed)


def map_buffer(layout: SharedLayout) -> torch.Tensor:
    """The whole file as a shared uint8 tensor (FileNotFoundError naming the path)."""
    if not os.path.exists(layout.path):
        raise FileNotFoundError(f"shared weight buffer {layout.path} does not exist (removed, or another node)")
    return torch.from_file(layout.path, shared=True, size=layout.nbytes, dtype=torch.uint8)


def view(buf: torch.Tensor, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    return buf[offset:offset + n].view(dtype).view(shape)


def create_buffer(layout: SharedLayout) -> None:
    """Create the file (mode 0600, must not exist) at its full size; OSError names the path."""
    free = shutil.disk_usage(os.path.dirname(layout.path)).free
    if free < layout.nbytes:
        raise OSError(f"{os.path.dirname(layout.path)} has {free / 2**20:.0f} MiB free, the shared weight buffer "
                      f"{layout.path} needs {layout.nbytes / 2**20:.0f} MiB (use weight_sync.transport=object_store)")
    fd = os.open(layout.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, layout.nbytes)
    finally:
        os.close(fd)


def remove_buffer(layout: SharedLayout) -> None:
    try:
        os.unlink(layout.path)
    except FileNotFoundError:
        pass


def tensor_views(layout: SharedLayout) -> dict[str, torch.Tensor]:
    """HF name -> a tensor viewing its bytes of the mapped file (writes go to every mapping)."""
    buf = map_buffer(layout)
    return {name: view(buf, off, shape, layout.dtype) for name, (off, shape) in layout.entries.items()}


def check_tiling(layout: SharedLayout, written: list[list[tuple[str, int, int]]]) -> int:
    """Every element of every tensor written exactly once across the ranks' (name, first, count)
    lists (aliases map to their target); returns the bytes written, else raises WeightSyncError."""
    from workers.weight_sync import WeightSyncError

    spans: dict[str, list[tuple[int, int, int]]] = {n: [] for n in layout.entries}
    for rank, items in enumerate(written):
        for name, start, count in items:
            name = layout.aliases.get(name, name)
            if name not in spans:
                raise WeightSyncError(f"trainer rank {rank} wrote {name!r}, which the engine does not have")
            spans[name].append((start, count, rank))
    total = 0
    for name, parts in spans.items():
        n, at = layout.numel(name), 0
        for start, count, rank in sorted(parts):
            if start != at:
                what = (f"elements {at}..{start - 1} were not written" if start > at else
                        f"elements {start}..{min(at, start + count) - 1} were written twice (rank {rank} among them)")
                raise WeightSyncError(f"shared-memory sync: tensor {name!r} ({n} elements): {what}; the engine "
                                      f"would load stale or mixed values")
            at = start + count
        if at != n:
            raise WeightSyncError(f"shared-memory sync: tensor {name!r} ({n} elements): elements {at}..{n - 1} "
                                  f"were not written; the engine would load stale values")
        total += n
    return total * torch.empty((), dtype=layout.dtype).element_size()
