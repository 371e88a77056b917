"""A third-party advantage estimator: REINFORCE with the batch-mean reward as the baseline.

    pip install examples/plugin_algorithm
    hyflow train configs/quickstart.yaml algorithm.advantage=mean_baseline

Importing this module registers the estimator; hyflow imports it through the `hyflow.algorithms`
entry point, so nothing in hyflow names it.
"""
import torch

from algorithms import register_advantage_estimator


@register_advantage_estimator("mean_baseline")
def mean_baseline(scores: torch.Tensor, mask: torch.Tensor, **_) -> torch.Tensor:
    """A_i = r_i - mean_j r_j over the whole batch, broadcast over each row's response tokens."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    return (scores - scores.mean())[:, None] * mask.to(torch.float32)
