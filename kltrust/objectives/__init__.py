"""The pure losses: PPO's surrogate and penalties (`ppo`), TRPO's trust-region step (`trpo`), the
group-baseline token gradients (`grpo`), and the preference losses (`preference`, with `dpo`,
`fdpo`, `kto` and `simpo` registering into it), sharing one weighted mean (`reduce`). Each takes
arrays and returns a loss and its metrics. Every KL they measure comes from `kltrust.kl`; the
preference losses regularise implicitly, through log-ratios to the reference.
"""
