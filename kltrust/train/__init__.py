"""Training programs that tie rollout, objective and controller together."""
