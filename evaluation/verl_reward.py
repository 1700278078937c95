"""Rule-based math reward for RL after PSFT (verl's ``reward.custom_reward_function``).

    reward.custom_reward_function.path=pkg://evaluation.verl_reward reward.custom_reward_function.name=compute_score
    # optional: +reward.custom_reward_function.reward_kwargs.grade_timeout_s=5

1.0 when the response's final answer matches the ground truth under evaluation.grader (the same
grader the evaluation tool scores with), else 0.0. Each call is bounded: answer extraction is linear
in the response and math-verify runs in a helper process killed after ``grade_timeout_s``, so one
pathological rollout cannot stall a training step (a call returns within twice that limit).
"""

from __future__ import annotations

from typing import Any

from evaluation.grader import DEFAULT_TIMEOUT_S, grade


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    grade_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> float:
    return 1.0 if grade(solution_str, str(ground_truth), timeout_s=grade_timeout_s).correct else 0.0
