"""Join the torch.distributed process group, with an explicit timeout and every listener bound to
one known address.

Every collective of a group runs under the group's timeout, so a dead or stuck peer raises an
error after `timeout_s` instead of hanging the job forever (the backends' failure contract).

    RANK, WORLD_SIZE          this process's rank and the group size (default 0 / 1)
    MASTER_ADDR, MASTER_PORT  the rendezvous store on rank 0 (needed when WORLD_SIZE > 1); both
                              can be passed to `init_distributed` instead (multi-node: the driver
                              asks rank 0 for them with `reserve_rendezvous` and publishes them)
    HYFLOW_BIND_ADDR          the address this process's own listeners bind to (default: loopback
                              when MASTER_ADDR is loopback, else this node's Ray address)
    LOCAL_RANK                the CUDA device index on this node (default: RANK)
    HYFLOW_DIST_TIMEOUT_S     default timeout in seconds when none is passed (600)

Where things listen (checked by tests/test_rendezvous.py):
- the rendezvous TCPStore of rank 0: torch's `tcp://` init method (and a plain `TCPStore`) listens
  on every interface whatever host it is given, so rank 0 binds a socket to MASTER_ADDR itself
  and hands it to the store (`master_listen_fd`);
- gloo: every process group (ours, and the ones vLLM and DeepSpeed create) opens listeners on the
  address of its device, which is the interface in GLOO_SOCKET_IFNAME or else whatever the
  hostname resolves to. `bind_gloo` sets GLOO_SOCKET_IFNAME to the interface holding the bind
  address (loopback: always; another address: unless the user chose an interface).
Single node: everything on 127.0.0.1. Multi-node: MASTER_ADDR is rank 0's node address and each
process binds to its own node's address. A WorkerGroup (orchestrator/worker_group.py) wires this up:
each worker sets VLLM_HOST_IP (and, multi-node, HYFLOW_BIND_ADDR) to `host_address()` when it starts,
rank 0 calls `reserve_rendezvous(host_address())`, and every rank gets the published (address, port)
as MASTER_ADDR / MASTER_PORT before its first method runs.

Backend: gloo on CPU, nccl when CUDA is available.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
LOOPBACK = "127.0.0.1"

# rank 0's listening socket from `reserve_rendezvous`, handed to the store by `init_distributed`
_reserved: socket.socket | None = None


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


# ---- addresses ------------------------------------------------------------------------------------
def is_loopback(addr: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; False for wildcards (0.0.0.0, ::) and the rest."""
    if addr == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def node_ip_address() -> str:
    """This node's address in the Ray cluster (127.0.0.1 for a loopback-only local cluster)."""
    import ray.util
    return ray.util.get_node_ip_address()


def bind_address(master_addr: str | None = None) -> str:
    """The address this process's listeners bind to: HYFLOW_BIND_ADDR, else loopback when the
    rendezvous (`master_addr`, default MASTER_ADDR) is on loopback or unset (single node), else
    this node's address."""
    explicit = os.environ.get("HYFLOW_BIND_ADDR")
    if explicit:
        return explicit
    master = master_addr or os.environ.get("MASTER_ADDR")
    return LOOPBACK if not master or is_loopback(master) else node_ip_address()


def host_address(single_node: bool) -> str:
    """The address a worker process is reached at and listens on (VLLM_HOST_IP, rank 0's rendezvous,
    gloo): HYFLOW_BIND_ADDR when set, else loopback when its pool runs on one node (a single-node
    run is not reachable from the network), else this node's address in the Ray cluster."""
    explicit = os.environ.get("HYFLOW_BIND_ADDR")
    if explicit:
        return explicit
    return LOOPBACK if single_node else node_ip_address()


def interface_for(addr: str) -> str:
    """Name of the network interface that holds `addr` (e.g. "lo" for 127.0.0.1)."""
    import psutil

    want = ipaddress.ip_address(LOOPBACK if addr == "localhost" else addr)
    found = {}
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = a.address.split("%")[0]
            found.setdefault(name, []).append(ip)
            if ipaddress.ip_address(ip) == want:
                return name
    if want.is_loopback:  # 127.0.0.2...: any address of the loopback net is on the loopback interface
        for name, ips in found.items():
            if any(ipaddress.ip_address(ip).is_loopback for ip in ips):
                return name
    raise ValueError(f"no network interface holds address {addr}; interfaces: {found}")


def bind_gloo(addr: str | None = None) -> str:
    """Make gloo's listeners in this process bind to `addr` (default `bind_address()`): sets
    GLOO_SOCKET_IFNAME to its interface before any gloo group exists. A loopback address always
    wins (single node: nothing may listen elsewhere); for another address an interface the user
    set is kept. Returns the interface gloo will use."""
    addr = addr or bind_address()
    current = os.environ.get("GLOO_SOCKET_IFNAME")
    if current and not is_loopback(addr):
        return current
    name = interface_for(addr)
    os.environ["GLOO_SOCKET_IFNAME"] = name
    return name


def _listen(addr: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((addr, port))
        s.listen(128)
    except OSError:
        s.close()
        raise
    return s


def reserve_rendezvous(addr: str | None = None) -> tuple[str, int]:
    """Rank 0 (multi-node): bind the rendezvous socket now on `addr` (default: this node's
    address in the Ray cluster, `node_ip_address()`) at a free port, keep it open, and return
    (addr, port) for the driver to pass to every rank's `init_distributed(master_addr=...,
    master_port=...)`. `init_distributed` on this rank then serves the store on this very socket,
    so no other process can take the port in between."""
    global _reserved
    addr = addr or node_ip_address()
    if _reserved is not None:
        _reserved.close()
    _reserved = _listen(addr, 0)
    return addr, _reserved.getsockname()[1]


def free_port(addr: str = LOOPBACK) -> int:
    """A TCP port that is free on `addr` right now (for MASTER_PORT in tests and local runs)."""
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _store(addr: str, port: int, rank: int, world_size: int, timeout: datetime.timedelta) -> dist.TCPStore:
    """Rank 0 serves the TCPStore on a socket bound to `addr` only; the others connect to it."""
    global _reserved
    if rank != 0:
        return dist.TCPStore(addr, port, world_size, False, timeout)
    sock = None
    if _reserved is not None and _reserved.getsockname()[1] == port:
        sock, _reserved = _reserved, None
    else:
        try:
            sock = _listen(addr, port)
        except OSError as e:
            raise RuntimeError(f"rank 0: cannot listen on {addr}:{port} for the rendezvous store: {e}") from e
    try:
        return dist.TCPStore(addr, port, world_size, True, timeout, wait_for_workers=False,
                             master_listen_fd=sock.detach())
    finally:
        sock.close()


def init_distributed(timeout_s: float | None = None, backend: str | None = None, *,
                     master_addr: str | None = None, master_port: int | None = None) -> tuple[int, int]:
    """Join (or create) the default process group; returns (rank, world_size).

    RANK / WORLD_SIZE come from the environment; the rendezvous address from `master_addr` /
    `master_port`, else MASTER_ADDR / MASTER_PORT. Rank 0's store listens on `master_addr` only and
    gloo binds to this process's `bind_address()` (see the module docstring).
    Idempotent: a process that already joined gets its rank back (the timeout is then the one
    it joined with). A single rank without a port gets an in-memory store, so one-process
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
    if master_port is None and os.environ.get("MASTER_PORT"):
        master_port = _int_env("MASTER_PORT", None)
    addr = master_addr or os.environ.get("MASTER_ADDR")
    bind = bind_address(addr)
    bind_gloo(bind)  # also for nccl: vLLM and DeepSpeed add gloo groups for CPU-side collectives
    if "nccl" in backend and is_loopback(bind):
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface_for(bind))  # NCCL's bootstrap listeners
    if world_size == 1 and master_port is None:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        return rank, world_size
    if not addr:
        raise ValueError("environment variable MASTER_ADDR is required for torch.distributed")
    if master_port is None:
        raise ValueError("environment variable MASTER_PORT is required for torch.distributed")
    store = _store(addr, int(master_port), rank, world_size, timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return rank, world_size


def destroy() -> None:
    """Leave the process group (no-op when not joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_scalar(value: float, op: str = "sum") -> float:
    """`value` reduced over the ranks ("sum" or "max"; itself without a process group). The tensor
    lives where the backend can reduce it: the GPU under NCCL, the CPU under gloo."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.item()
