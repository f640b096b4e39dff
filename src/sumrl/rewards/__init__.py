"""Rewards for RL: metric rewards with per-token output, the reward registry and reward models.

Import from the submodules (kept out of this file so that ``sumrl --help`` does not import torch):
``sumrl.rewards.base`` (the contract), ``sumrl.rewards.registry`` (``build_reward``),
``sumrl.rewards.metric``, ``sumrl.rewards.reward_model``, ``sumrl.rewards.negatives``,
``sumrl.rewards.align``, ``sumrl.rewards.agreement``.
"""
