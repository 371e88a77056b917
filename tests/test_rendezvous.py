"""Every TCP listener of a run's worker processes is on loopback (a single-node run must not be
reachable from the network): the trainer ranks' torch.distributed store and gloo pairs, and the
rollout worker's in-process vLLM engine (its own gloo groups), plus Ray's own sockets in them.

The workers run with GLOO_SOCKET_IFNAME naming a non-loopback interface, as on a machine whose
hostname resolves to its external address (gloo's default device): on this machine the hostname
resolves to 127.0.0.1, which would hide a gloo listener that only loopback-by-luck keeps local.
"""
from __future__ import annotations

import ipaddress
import os
import socket

import psutil
import pytest
import torch

from orchestrator.worker_group import Dispatch, Execute, WorkerGroup, register
from workers.base import Worker


def external_interface() -> str | None:
    """An interface that is up and holds a non-loopback IPv4 address (None if the machine has none)."""
    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        if stats.get(name) and stats[name].isup and any(
                a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback for a in addrs):
            return name
    return None


def listeners(pid: int) -> list[str]:
    return sorted(f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(pid).net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN)


def on_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (an IPv6 socket bound to loopback)
    return (mapped or addr).is_loopback


def assert_loopback_only(what: str, pid: int) -> list[str]:
    found = listeners(pid)
    assert found, f"{what} (pid {pid}) listens nowhere: the check would pass vacuously"
    exposed = [a for a in found if not on_loopback(a.rsplit(":", 1)[0])]
    assert not exposed, f"{what} (pid {pid}) listens on non-loopback addresses {exposed} (all: {found})"
    return found


class RendezvousWorker(Worker):
    @register(dispatch=Dispatch.ONE_TO_ALL)
    def join(self, master_addr: str | None = None, master_port: int | None = None) -> dict:
        import torch.distributed as dist

        from workers.dist import init_distributed
        given = {} if master_addr is None else {"master_addr": master_addr, "master_port": master_port}
        rank, world = init_distributed(timeout_s=60, **given)
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        return {"pid": os.getpid(), "rank": rank, "world": world, "sum": t.item()}

    @register(dispatch=Dispatch.ONE_TO_ALL, execute=Execute.RANK_ZERO)
    def reserve(self) -> tuple[str, int]:
        from workers.dist import reserve_rendezvous
        return reserve_rendezvous()

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def env_var(self, name: str) -> str | None:
        return os.environ.get(name)

    @register(dispatch=Dispatch.ONE_TO_ALL)
    def leave(self) -> None:
        from workers.dist import destroy
        destroy()


@pytest.fixture(scope="module")
def gloo_env():
    iface = external_interface()
    if iface is None:
        pytest.skip("no non-loopback interface to point gloo at")
    return {"GLOO_SOCKET_IFNAME": iface}


@pytest.fixture(scope="module")
def pool(ray_cluster):
    from orchestrator.resources import ResourcePool
    p = ResourcePool(2, cpus_per_bundle=0.5, name="rendezvous")
    yield p
    p.shutdown()


def test_trainer_ranks_listen_on_loopback_only(pool, gloo_env):
    group = WorkerGroup(pool, RendezvousWorker, name="rdv", num_cpus_per_worker=0.2, env=gloo_env)
    try:
        # 1. The single-node wiring: MASTER_ADDR=127.0.0.1 and a port from the group's env.
        outs = group.join()
        assert [(o["rank"], o["world"], o["sum"]) for o in outs] == [(0, 2, 3.0), (1, 2, 3.0)]
        store_port = int(group.env_var("MASTER_PORT")[0])
        found = assert_loopback_only("rank 0", outs[0]["pid"])
        print(f"\nrank 0 listens on {found} (store port {store_port})")
        assert f"127.0.0.1:{store_port}" in found  # the rendezvous store itself, on loopback
        assert_loopback_only("rank 1", outs[1]["pid"])
        group.leave()
        # 2. The multi-node wiring: the driver asks rank 0 for (its node's address, a port it
        # already holds) and passes them to every rank; in a loopback-only cluster that is loopback.
        addr, port = group.reserve()
        assert addr == "127.0.0.1" and port != store_port
        outs = group.join(addr, port)
        assert [o["sum"] for o in outs] == [3.0, 3.0]
        assert f"127.0.0.1:{port}" in assert_loopback_only("rank 0 (reserved port)", outs[0]["pid"])
        assert_loopback_only("rank 1 (reserved port)", outs[1]["pid"])
        group.leave()
    finally:
        group.shutdown()


def test_vllm_rollout_worker_listens_on_loopback_only(pool, gloo_env, tiny_model_dir):
    from workers.rollout import RolloutWorker
    group = WorkerGroup(pool, RolloutWorker, dict(model_path=tiny_model_dir, engine="vllm",
                                                  engine_kwargs=dict(max_model_len=128, kv_cache_gb=0.0625)),
                        name="rdv-rollout", num_cpus_per_worker=0.2, bundle_indices=[0], env=gloo_env)
    try:
        pid = group.setup()[0]["pid"]
        found = assert_loopback_only("the vLLM rollout worker", pid)
        assert len(found) > 1, found  # vLLM's gloo groups, not only Ray's own socket
        assert group.score([[1, 2, 3, 4]], [1])[0]  # the engine works with its groups on loopback
    finally:
        group.shutdown()


def test_bind_address_and_gloo_interface(monkeypatch):
    from workers import dist
    for addr, loop in (("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("::ffff:127.0.0.1", True),
                       ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.0.2.7", False)):
        assert dist.is_loopback(addr) is loop, addr
    assert dist.interface_for("127.0.0.1") == dist.interface_for("127.0.0.5") == "lo"
    with pytest.raises(ValueError, match="no network interface holds address 203.0.113.9"):
        dist.interface_for("203.0.113.9")
    monkeypatch.delenv("HYFLOW_BIND_ADDR", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert dist.bind_address() == "127.0.0.1"
    monkeypatch.setenv("HYFLOW_BIND_ADDR", "10.1.2.3")  # multi-node: the node's cluster address
    assert dist.bind_address() == "10.1.2.3"
    # Loopback overrides an interface the user chose (single node: nothing may listen elsewhere);
    # another address keeps it.
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    assert dist.bind_gloo("127.0.0.1") == "lo" and os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    assert dist.bind_gloo("10.1.2.3") == "eth7"
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    iface = external_interface()
    if iface is not None:
        ip = next(a.address for a in psutil.net_if_addrs()[iface] if a.family == socket.AF_INET)
        assert dist.bind_gloo(ip) == iface
