"""Flax policy and value networks: the control MLP and the token transformer."""

from kltrust.models.mlp import ActorCritic

__all__ = ["ActorCritic"]
