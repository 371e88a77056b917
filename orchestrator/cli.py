"""`hyflow` command line.

    hyflow train configs/quickstart.yaml [key.path=value ...]   # run a recipe with overrides
    hyflow train --help                                          # every recipe key, type, default
    hyflow eval configs/quickstart.yaml [--checkpoint DIR] [key.path=value ...]   # greedy held-out metrics
                                                                 # (JSON on stdout, logs on stderr)
    hyflow train-rm configs/rm_math.yaml [key.path=value ...]   # a reward model from preference pairs
    hyflow submit [--address URL] [--wait] CONFIG [key.path=value ...]   # a run as a Ray Job
    hyflow jobs list | status ID | logs ID [--follow] | stop ID        # Ray Jobs on the cluster
    hyflow view RUN_DIR [--out FILE]                            # one self-contained HTML page of a run
    hyflow --version
    hyflow --log-level WARNING train ...                         # the driver's log level (default INFO)
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
    parser.add_argument("config", help="YAML recipe (configs/*.yaml) or a packaged recipe's name (quickstart)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    if not argv:
        from orchestrator.recipes import packaged_recipes
        print("hyflow train: needs a recipe, e.g. `hyflow train configs/quickstart.yaml` (or `hyflow train "
              f"quickstart`); packaged recipes: {', '.join(sorted(packaged_recipes()))}; keys: hyflow train --help",
              file=sys.stderr)
        return 2
    args = parser.parse_intermixed_args(argv)  # options may come before or after the overrides
    try:
        from orchestrator.preflight import preflight
        from orchestrator.recipes import resolve_recipe
        cfg = load_config(resolve_recipe(args.config), args.overrides)
        preflight(cfg)  # every file the config names, before anything starts (seconds)
    except (ConfigError, FileNotFoundError) as e:
        print(f"hyflow train: {e}", file=sys.stderr)
        return 2

    from orchestrator.trainer import Trainer
    from workers.reward import RewardError
    if cfg.for_.enabled:  # Flow of Reasoning: the GFlowNet trainer (orchestrator/for_trainer.py)
        from orchestrator.for_trainer import ForTrainer as Trainer

    try:
        trainer = Trainer(cfg)
    except ConfigError as e:  # e.g. a used trainer.output_dir (checked before Ray starts)
        print(f"hyflow train: {e}", file=sys.stderr)
        return 2
    try:
        trainer.fit()
    except RewardError as e:
        print(f"hyflow train: {e}", file=sys.stderr)
        return 1
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
    parser.add_argument("--generations", metavar="FILE", help="write what the model generated to this JSON-lines file")
    args = parser.parse_intermixed_args(argv)  # options may come before or after the overrides
    from orchestrator.evaluate import CheckpointError, evaluate, resolve_checkpoint
    from orchestrator.preflight import preflight
    from orchestrator.recipes import resolve_recipe
    try:
        cfg = load_config(resolve_recipe(args.config), args.overrides)
        preflight(cfg)
        model = resolve_checkpoint(args.checkpoint) if args.checkpoint else None
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"hyflow eval: {e}", file=sys.stderr)
        return 2
    with stdout_to_stderr():  # Ray forwards the workers' output to stdout: keep stdout for the JSON
        try:
            result = evaluate(cfg, model, args.generations)
        except ConfigError as e:
            print(f"hyflow eval: {e}", file=sys.stderr)
            return 2
        finally:
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
    argv = list(sys.argv[1:] if argv is None else argv)
    level = "INFO"
    if "--log-level" in argv:  # the driver's log level (DEBUG, INFO, WARNING, ERROR), anywhere on the line
        i = argv.index("--log-level")
        if i + 1 >= len(argv) or argv[i + 1].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            print("hyflow: --log-level takes DEBUG, INFO, WARNING or ERROR", file=sys.stderr)
            return 2
        level = argv[i + 1].upper()
        del argv[i:i + 2]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    commands = {"train": _train, "eval": _eval, "submit": _lazy("orchestrator.jobs", "submit_main"),
                "jobs": _lazy("orchestrator.jobs", "jobs_main"), "view": _lazy("orchestrator.view", "main"),
                "train-rm": _lazy("orchestrator.rm_train", "main")}
    if argv and argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"hyflow {version('hyflow')}")
        except PackageNotFoundError:
            print("hyflow (not installed)")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in commands:
        print(f"hyflow: unknown command {argv[0]!r}; commands: {', '.join(commands)} (hyflow --help)", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def _lazy(module: str, function: str):
    """A command whose module is imported only when it runs (keeps `hyflow --help` instant)."""
    def run(argv: list[str]) -> int:
        import importlib
        return importlib.import_module(module).__dict__[function](argv)
    return run


if __name__ == "__main__":
    sys.exit(main())
