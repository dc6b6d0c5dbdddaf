"""``config.domains`` and ``config.proxy_bug.domain`` of the synthetic token pipeline: their checks
and the `DomainSpec` they are read into (`kltrust.domains` for what the envelopes do)."""

from __future__ import annotations

import ml_collections

from kltrust.errors import check, check_choice, is_finite, is_int
from kltrust.train.methods import METHODS
from kltrust.train.token_spec import DOMAIN_CONTROLS, DomainSpec


def validate_domains(config: ml_collections.ConfigDict) -> None:
    """``config.domains`` and ``config.proxy_bug.domain`` (`DomainSpec`)."""
    d = config.domains
    check(is_int(d.count, 1) and d.count <= config.task.num_words, "domains.count", d.count,
          f"an integer in [1, task.num_words = {config.task.num_words}] (a domain is a set of "
          "first words)")
    scale = tuple(d.kl_scale)
    check(len(scale) in (0, d.count) and all(is_finite(s) and s > 0 for s in scale),
          "domains.kl_scale", d.kl_scale,
          f"empty (every domain 1) or {d.count} finite numbers > 0, one per domain")
    check_choice(d.control, DOMAIN_CONTROLS, "domains.control")
    bug = config.proxy_bug.domain
    check(bug == -1 or (is_int(bug, 0) and bug < d.count), "proxy_bug.domain", bug,
          f"-1 (every prompt) or a domain id in [0, domains.count = {d.count})")
    if d.control != "per_domain" or config.stage != "policy":
        return
    check(d.count > 1, "domains.control", d.control,
          "'global' when domains.count is 1 (there is one domain)")
    rl = config.rl
    supported = METHODS.get(rl.method, "rl.method").per_domain
    check(rl.kl_placement in supported, "domains.control", d.control,
          f"'global' for method {rl.method!r} with rl.kl_placement {rl.kl_placement!r} (per-domain "
          f"envelopes need one of the placements {supported})")


def domain_spec(config: ml_collections.ConfigDict) -> DomainSpec:
    """The `DomainSpec` of a validated ``config.domains`` (`validate_domains`)."""
    d = config.domains
    return DomainSpec(count=d.count, kl_scale=tuple(float(s) for s in d.kl_scale) or
                      (1.0,) * d.count, control=d.control)
