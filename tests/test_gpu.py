"""GPU-only paths (CUDA vLLM, NCCL): marked `gpu`, skipped without CUDA. Run them on a GPU
machine with `bash bench/gpu_check.sh` (the default test tier deselects them)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_vllm_in_place_update_matches_hf(tiny_model_dir, tmp_path):
    """CUDA vLLM: sleep, in-place update to another model, wake: scores equal an HF forward."""
    import tests.tiny as tiny
    from transformers import AutoModelForCausalLM

    from workers.engines import make_engine

    other = tiny.build(tmp_path / "b", seed=1)
    engine = make_engine("vllm", tiny_model_dir, gpu_memory_utilization=0.2)
    seq = list(range(100, 140))
    engine.sleep()
    engine.wake_up()
    engine.begin_weight_update()
    state = AutoModelForCausalLM.from_pretrained(other).state_dict()
    engine.load_weights({k: v for k, v in state.items() if k != "lm_head.weight"})
    engine.finish_weight_update()
    got = torch.tensor(engine.score([seq], [1])[0])
    model = AutoModelForCausalLM.from_pretrained(other).eval()
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, :-1].float()
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    assert (got - ref).abs().max().item() < 1e-2  # vLLM CUDA kernels vs eager HF, fp32
    engine.shutdown()


@pytest.mark.parametrize("transport", ["auto", "ipc"])
def test_cuda_slice_one_step(ray_cluster, tiny_model_dir, tmp_path, transport):
    """The whole slice on one GPU: FSDP2 on NCCL (world size 1), CUDA vLLM, verified sync (through
    the object store, or by CUDA IPC handles to buckets on the trainer's GPU)."""
    from orchestrator.config import load_config
    from orchestrator.trainer import Trainer

    cfg = load_config("configs/quickstart.yaml", [
        f"model.path={tiny_model_dir}", "trainer.total_steps=1", f"trainer.output_dir={tmp_path}",
        "actor.world_size=1", "data.batch_size=2", "rollout.n=2", "rollout.max_new_tokens=16",
        "data.val_size=0", "rollout.gpu_memory_utilization=0.2", "trainer.progress=false",
        "weight_sync.tolerance=1e-2", f"weight_sync.transport={transport}"])
    trainer = Trainer(cfg)
    try:
        row = trainer.fit()
    finally:
        trainer.shutdown()
    assert row["sync/verified"] is True
