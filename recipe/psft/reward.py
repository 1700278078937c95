"""Rule-based math reward for RL after PSFT (verl's ``reward.custom_reward_function``).

    reward.custom_reward_function.path=pkg://recipe.psft.reward reward.custom_reward_function.name=compute_score

1.0 when the response's final answer matches the ground truth under evaluation.grader (the same
grader the evaluation tool scores with), else 0.0.
"""

from __future__ import annotations

from typing import Any

from evaluation.grader import is_correct


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> float:
    return 1.0 if is_correct(solution_str, str(ground_truth)) else 0.0
