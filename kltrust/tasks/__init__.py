"""Tasks with known structure: bandits with a closed-form KL-regularised optimum, control, text."""
