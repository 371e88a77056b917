"""`hyflow` command line.

    hyflow train configs/quickstart.yaml [key.path=value ...]   # run a recipe with overrides
    hyflow train --help                                          # every recipe key, type, default
    hyflow eval configs/quickstart.yaml [--checkpoint DIR] [key.path=value ...]   # greedy held-out metrics
                                                                 # (JSON on stdout, logs on stderr)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Process-wide settings that must precede torch / ray / vllm imports (see README "Environment").
_ENV = {"TORCH_COMPILE_DISABLE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "MASTER_ADDR": "127.0.0.1", "RAY_DEDUP_LOGS": "0",
        # The local cluster the CLI starts listens on 127.0.0.1 only: Ray's token auth (and its
        # notice on every start) adds nothing there. A cluster you join keeps its own setting.
        "RAY_AUTH_MODE": "disabled"}


def _train(argv: list[str]) -> int:
    from orchestrator.config import ConfigError, Config, describe, load_config

    parser = argparse.ArgumentParser(
        prog="hyflow train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with a YAML recipe and dotted overrides, e.g.\n"
                    "  hyflow train configs/quickstart.yaml trainer.total_steps=3 trainer.output_dir=/tmp/run",
        epilog="recipe keys (override any of them as key.path=value):\n" + describe(Config))
    parser.add_argument("config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_intermixed_args(argv)  # options may come before or after the overrides
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"hyflow train: {e}", file=sys.stderr)
        return 2

    from orchestrator.trainer import Trainer
    if cfg.for_.enabled:  # Flow of Reasoning: the GFlowNet trainer (orchestrator/for_trainer.py)
        from orchestrator.for_trainer import ForTrainer as Trainer

    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    return 0


def _eval(argv: list[str]) -> int:
    import json

    from orchestrator.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="hyflow eval", description="Greedy held-out evaluation of a recipe's "
                                     "task: math accuracy, or agent success overall and per task type.")
    parser.add_argument("config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.path=value (e.g. env.val_groups=128)")
    parser.add_argument("--checkpoint", help="a checkpoint folder (checkpoints/step_N) or an HF model folder "
                                             "(checkpoints/step_N/hf); default: model.path")
    args = parser.parse_intermixed_args(argv)  # options may come before or after the overrides
    from orchestrator.evaluate import CheckpointError, evaluate, resolve_checkpoint
    try:
        cfg = load_config(args.config, args.overrides)
        model = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"hyflow eval: {e}", file=sys.stderr)
        return 2
    with stdout_to_stderr():  # Ray forwards the workers' output to stdout: keep stdout for the JSON
        result = evaluate(cfg, model)
        import ray
        ray.shutdown()
    print(json.dumps(result, indent=1))
    return 0


class stdout_to_stderr:
    """Point file descriptor 1 (and sys.stdout) at stderr inside the block, for this process and
    the threads that print for it (Ray's log forwarding)."""

    def __enter__(self):
        sys.stdout.flush()
        self.saved_fd, self.saved = os.dup(1), sys.stdout
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stdout = self.saved
        os.dup2(self.saved_fd, 1)
        os.close(self.saved_fd)
        return False


def main(argv: list[str] | None = None) -> int:
    for k, v in _ENV.items():
        os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train": _train, "eval": _eval}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
