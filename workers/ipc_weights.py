"""Weight buckets handed to another process by handle, not by copy (CUDA IPC, as verl's colocated sync).

Used by `weight_sync.transport: ipc` (`workers.weight_sync.push_buckets` with `via="ipc"`): trainer
rank 0 gathers a bucket on its device, packs it into one flat buffer there, and sends each replica
a handle to that buffer (a few hundred bytes through Ray) instead of the bytes; the replica opens
the handle, which maps the trainer's device memory into its own process, and loads the bucket from
views of it: one device-to-device copy into the engine's weights, nothing through the host.

    flat, meta = pack_bucket(bucket)        # trainer: one buffer per bucket, 256-byte aligned tensors
    handle = share(flat)                    # trainer: picklable; keep `flat` alive until every load returned
    views = open_bucket(handle, meta)       # engine: HF name -> tensor view of the trainer's buffer
    engine.load_weights(views); del views   # engine: copy in, then drop the mapping

On CUDA the handle is torch's CUDA IPC handle (torch.multiprocessing.reductions.reduce_tensor) with
the device's UUID: the trainer and the engine may see the GPU under different indices (Ray sets
CUDA_VISIBLE_DEVICES per worker), so `open_bucket` finds the device by UUID, as verl patches the
device index. On CPU the same calls hand over a shared-memory buffer by file descriptor, which
works between processes of one torch.multiprocessing tree (tests/test_ipc_weights.py drives the
whole protocol that way); between Ray workers on CPU, use `weight_sync.transport: shm`.

Failure contract: `open_bucket` raises WeightSyncError naming the bucket's device when this
process cannot see it (no CUDA, or the UUID is not among its devices), and when the handle cannot
be opened (the trainer freed the buffer, or a process opened its own handle); the update is then
incomplete and the sync fails, as for any load error. `check_meta` rejects overlapping or
out-of-bounds entries before any view is made.
"""
from __future__ import annotations

import torch

from workers.weight_sync import WeightSyncError

ALIGN = 256  # bytes: CUDA allocations are 256-aligned, so every view starts aligned too


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"ipc bucket: unknown dtype {name!r}")
    return dtype


def pack_bucket(bucket: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, str, tuple, int]]]:
    """One flat uint8 buffer on the bucket's device holding every tensor (row-major, aligned), and
    its table of contents: (name, dtype, shape, byte offset) per tensor, in the bucket's order."""
    devices = {t.device for t in bucket.values()}
    if len(devices) > 1:
        raise ValueError(f"ipc bucket: tensors on several devices {sorted(map(str, devices))}")
    meta, off = [], 0
    for name, t in bucket.items():
        meta.append((name, str(t.dtype), tuple(t.shape), off))
        off += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    flat = torch.empty(max(off, ALIGN), dtype=torch.uint8, device=devices.pop() if devices else "cpu")
    for (name, _, shape, start), t in zip(meta, bucket.values()):
        n = t.numel() * t.element_size()
        flat[start:start + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    return flat, meta


def share(flat: torch.Tensor) -> tuple:
    """A picklable handle to `flat` for another process: (device UUID or None, rebuild function, args)."""
    from torch.multiprocessing.reductions import reduce_tensor
    if flat.is_cuda:
        uuid = str(torch.cuda.get_device_properties(flat.device).uuid)
    else:
        flat.share_memory_()
        uuid = None
    rebuild, args = reduce_tensor(flat)
    return uuid, rebuild, args


def _local_index(uuid: str) -> int:
    if not torch.cuda.is_available():
        raise WeightSyncError(f"ipc weight bucket is on GPU {uuid}, but this process sees no CUDA device "
                              f"(weight_sync.transport=ipc needs the engines on the trainer's GPUs)")
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise WeightSyncError(f"ipc weight bucket is on GPU {uuid}, which is not among this process's "
                          f"{torch.cuda.device_count()} visible device(s) (CUDA_VISIBLE_DEVICES); "
                          f"weight_sync.transport=ipc needs each engine on a GPU its trainer rank 0 can share")


def check_meta(meta: list, nbytes: int) -> None:
    """Entries inside the buffer, in increasing offsets, none overlapping the next."""
    end = 0
    for name, dtype, shape, off in meta:
        size = torch.Size(shape).numel() * _dtype(dtype).itemsize
        if off < end or off + size > nbytes:
            raise ValueError(f"ipc bucket: tensor {name!r} at bytes [{off}, {off + size}) overlaps the previous "
                             f"one or leaves the {nbytes}-byte buffer")
        end = off + size


def open_bucket(handle: tuple, meta: list) -> dict[str, torch.Tensor]:
    """Views (HF name -> tensor) of the buffer `handle` names, laid out as `meta` says."""
    uuid, rebuild, args = handle
    if uuid is not None:
        args = list(args)
        args[6] = _local_index(uuid)  # rebuild_cuda_tensor's storage_device: this process's index
    try:
        flat = rebuild(*args)
    except RuntimeError as e:
        raise WeightSyncError(f"ipc weight bucket ({'GPU ' + uuid if uuid else 'CPU'}) could not be opened: {e}") from e
    check_meta(meta, flat.numel())
    return {name: flat[off:off + torch.Size(shape).numel() * _dtype(dtype).itemsize].view(_dtype(dtype)).view(shape)
            for name, dtype, shape, off in meta}
