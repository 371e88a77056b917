"""Multi-node placement and rendezvous (issue #12.2) on a real three-raylet Ray cluster on this
machine: a head node with no CPUs (the driver's) and two worker nodes at 127.0.0.2 and 127.0.0.3,
so no worker runs at 127.0.0.1 and an address hard-coded to loopback shows.

`resources.nnodes=2 resources.devices_per_node=1 resources.strategy=STRICT_SPREAD` puts the two
FSDP ranks on different nodes and the engine on one of them; one training step of the tiny model
runs there with a verified weight sync. Rank 0 publishes its node's address and a port it holds,
every rank joins it, and each worker's VLLM_HOST_IP is its own node's address.

The cluster runs in a subprocess (this file run as a script) with its own RAY_TMPDIR and process
group, so neither the session's Ray cluster nor anyone else's is touched.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
NODE_IPS = ("127.0.0.2", "127.0.0.3")


# ---- config (no Ray) ---------------------------------------------------------------------------------
def test_resources_keys_reconcile_with_world_size():
    cfg = load_config(None, ["resources.nnodes=2", "resources.devices_per_node=2", "actor.world_size=4"])
    assert (cfg.resources.nnodes, cfg.resources.devices_per_node, cfg.resources.strategy) == (2, 2, "PACK")
    assert load_config(None).resources.nnodes is None  # unset: actor.world_size alone, as before
    with pytest.raises(ConfigError, match=r"^actor\.world_size: 2 disagrees with resources\.nnodes x "
                                          r"resources\.devices_per_node = 2 x 2 = 4"):
        load_config(None, ["resources.nnodes=2", "resources.devices_per_node=2"])
    with pytest.raises(ConfigError, match=r"^resources\.devices_per_node: must be set together with resources\.nnodes"):
        load_config(None, ["resources.nnodes=2"])
    with pytest.raises(ConfigError, match=r"^resources\.strategy: STRICT_SPREAD puts one bundle per node, but "
                                          r"resources\.devices_per_node is 2"):
        load_config(None, ["resources.nnodes=1", "resources.devices_per_node=2", "resources.strategy=STRICT_SPREAD"])
    with pytest.raises(ConfigError, match=r"^resources\.strategy: STRICT_PACK keeps every bundle on one node"):
        load_config(None, ["resources.nnodes=2", "resources.devices_per_node=1", "resources.strategy=STRICT_PACK"])
    with pytest.raises(ConfigError, match=r"^resources\.strategy: expected one of"):
        load_config(None, ["resources.strategy=ROUND_ROBIN"])


# ---- two nodes -----------------------------------------------------------------------------------------
def test_two_node_training_step(tiny_model_dir, tmp_path):
    out = tmp_path / "result.json"
    ray_tmp = tempfile.mkdtemp(prefix="hfmn", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [sys.executable, "-m", "tests.test_multinode", tiny_model_dir, str(tmp_path / "run"), str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the cluster's processes too
    try:
        log, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the two-node run did not finish in 420 s:\n{log[-4000:]}")
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert proc.returncode == 0, log[-6000:]
    r = json.loads(out.read_text())
    print(f"\ntwo-node step: {r['step_s']:.1f}s (whole run {r['run_s']:.0f}s); placement {r['layout']}")
    nodes = r["nodes"]  # node id -> address, from Ray's node table

    # The two FSDP ranks ran on two different nodes, each at its own address.
    trainer = r["where"]["trainer"]
    assert len(trainer) == 2 and trainer[0]["node_id"] != trainer[1]["node_id"]
    assert sorted(nodes[w["node_id"]] for w in trainer) == sorted(NODE_IPS)
    for w in trainer:
        assert w["node_ip"] == nodes[w["node_id"]]
        assert w["VLLM_HOST_IP"] == w["HYFLOW_BIND_ADDR"] == w["node_ip"]  # its own node's, set in the worker
        assert w["LOCAL_RANK"] == "0"  # the only rank on its node
    # Rank 0 published its node's address and a port; both ranks joined that; rank 0's store listens there.
    rank0 = trainer[0]
    assert [(w["MASTER_ADDR"], w["MASTER_PORT"]) for w in trainer] == [(rank0["node_ip"], rank0["MASTER_PORT"])] * 2
    assert f"{rank0['node_ip']}:{rank0['MASTER_PORT']}" in r["rank0_listens"]
    # The engine ran on one of the two nodes, at that node's address.
    (engine,) = r["where"]["rollout"]
    assert engine["node_id"] in {w["node_id"] for w in trainer}
    assert engine["VLLM_HOST_IP"] == nodes[engine["node_id"]]

    # One training step with a verified sync over the two nodes.
    m = r["metrics"]
    assert m["sync/verified"] is True and m["sync/checksum_max_rel_err"] < 1e-6 and m["sync/bytes"] > 0
    # (FSDP gathers every layer from both ranks in the forward, the update and the sync's gather; the
    # tiny random model's rewards are mostly all 0, so the update itself may not move the weights.)
    assert m["timing/train_s"] > 0 and "actor/pg_loss" in m and m["step"] == 1


# ---- the script (the subprocess) -----------------------------------------------------------------------
def run_two_nodes(model_dir: str, run_dir: str, out_path: str) -> None:
    import time

    import psutil
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.trainer import Trainer
    from tests.test_recipes import shrink

    t0 = time.time()
    store = 150 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False,
                                                                object_store_memory=store))
    for ip, name in zip(NODE_IPS, ("node_b", "node_c")):
        cluster.add_node(num_cpus=1, node_ip_address=ip, resources={name: 1}, object_store_memory=store)
    trainer = None
    try:
        cluster.wait_for_nodes()
        cfg = load_config(str(REPO / "configs/quickstart.yaml"), [
            f"model.path={model_dir}", "trainer.total_steps=1", f"trainer.output_dir={run_dir}",
            f"ray.address={cluster.address}", "resources.nnodes=2", "resources.devices_per_node=1",
            "resources.strategy=STRICT_SPREAD", "actor.world_size=2", "actor.cpus_per_worker=1",
            "reward.num_workers=1", *shrink("quickstart.yaml", Path(run_dir))])
        trainer = Trainer(cfg)
        t1 = time.time()
        metrics = trainer.step()
        step_s = time.time() - t1
        where = {g.name: g.where() for g in trainer.w.groups}
        rank0 = where["trainer"][0]["pid"]
        listens = sorted(f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(rank0).net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN)
        result = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool, str))},
                  "where": where, "nodes": {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]},
                  "rank0_listens": listens, "layout": trainer.w.pool.layout(), "step_s": step_s,
                  "run_s": time.time() - t0}
        Path(out_path).write_text(json.dumps(result, indent=1, default=str))
    finally:
        if trainer is not None:
            trainer.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    run_two_nodes(*sys.argv[1:4])
