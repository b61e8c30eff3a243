"""A custom GRPO reward for the tests (``grpo.rewards={tests.helpers_rewards:chinese_unless_fixed: 1.0}``)."""
from __future__ import annotations

from sft.rewards import zh_share_reward


def chinese_unless_fixed(completion: str, record: dict) -> float:
    """The Han share of the answer, except for records with a ``fixed`` reward: their groups all score the
    same and teach nothing (what dynamic sampling replaces)."""
    return float(record["fixed"]) if "fixed" in record else zh_share_reward(completion)
