"""Flax policy and value networks."""

from kltrust.models.mlp import ActorCritic

__all__ = ["ActorCritic"]
