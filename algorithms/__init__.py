"""Pure RL algorithm core: advantage estimators and policy losses (torch / numpy / stdlib only; the
registry table itself is orchestrator/plugins.py, stdlib).

Importing the package registers the built-ins; third-party plug-ins come in through the
``hyflow.algorithms`` entry-point group (see registry).
"""
from .registry import (ENTRY_POINT_GROUP, get_advantage_estimator, get_policy_loss,
                       list_advantage_estimators, list_policy_losses, load_plugins,
                       register_advantage_estimator, register_policy_loss)
from . import grpo, losses  # noqa: F401  (imported for their registrations)
from . import gflownet, replay  # noqa: F401  (GFlowNet objectives, replay, local search)
from . import gae, gigpo, reinforce_pp, rloo, step_grpo  # noqa: F401  (registrations)
from .grpo import compute_grpo_advantages
from .losses import (aggregate, entropy_from_logits, kl_penalty, masked_mean, masked_whiten,
                     ppo_clip_loss)

__all__ = [
    "ENTRY_POINT_GROUP", "get_advantage_estimator", "get_policy_loss", "list_advantage_estimators",
    "list_policy_losses", "load_plugins", "register_advantage_estimator", "register_policy_loss",
    "compute_grpo_advantages", "aggregate", "entropy_from_logits", "kl_penalty", "masked_mean",
    "masked_whiten", "ppo_clip_loss",
]
