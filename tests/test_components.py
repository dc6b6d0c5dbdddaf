"""The component declarations: knobs derive defaults, validation and pytrees; registries and slots."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kltrust import components
from kltrust.errors import ConfigError


@components.hparams
class _Knobs:
    rate: jax.Array = components.knob(0.1, "a rate", low=0, low_open=True)
    share: jax.Array = components.knob(0.0, "a share", low=0, high=0.5, high_open=True)
    cap: jax.Array = components.knob(1.0, "a cap", low=0, allow_inf=True)


class _Entry:
    hparams = _Knobs


def test_defaults_and_pytree():
    group = components.config_defaults(_Knobs)
    assert group.to_dict() == {"rate": 0.1, "share": 0.0, "cap": 1.0}
    hp = components.from_config(_Knobs, group)
    assert jax.tree.leaves(hp) and all(x.dtype == jnp.float32 for x in jax.tree.leaves(hp))
    batched = jax.vmap(lambda h: h.rate * 2)(components.create(_Knobs, rate=[0.1, 0.2]))
    np.testing.assert_allclose(batched, [0.2, 0.4], rtol=1e-7)


@pytest.mark.parametrize("key, value, message", [
    ("rate", 0.0, "config.k.rate = 0.0: must be in (0, inf)."),
    ("rate", float("nan"), "config.k.rate = nan: must be in (0, inf)."),
    ("share", 0.5, "config.k.share = 0.5: must be in [0, 0.5)."),
    ("share", (0.1, 0.7), "config.k.share = 0.7: must be in [0, 0.5)."),
    ("cap", -float("inf"), "config.k.cap = -inf: must be in [0, inf]."),
    ("rate", "fast", "config.k.rate = 'fast': must be a number"),
])
def test_validate_names_key_value_and_interval(key, value, message):
    group = ml_collections.ConfigDict({**components.config_defaults(_Knobs).to_dict(), key: value})
    with pytest.raises(ConfigError) as info:
        components.validate(_Knobs, group, "k")
    assert str(info.value).startswith(message)


def test_validate_accepts_inf_only_where_allowed_and_refuses_unknown_keys():
    group = components.config_defaults(_Knobs)
    group.cap = math.inf
    components.validate(_Knobs, group, "k")
    group = ml_collections.ConfigDict({**group.to_dict(), "rte": 1.0})
    with pytest.raises(ConfigError, match="config.k.rte: unknown key; did you mean 'rate'"):
        components.validate(_Knobs, group, "k")


def test_create_checks_concrete_values_but_not_tracers():
    with pytest.raises(ConfigError, match=r"config.w.rate = -1.0: must be in \(0, inf\)"):
        components.create(_Knobs, "w", rate=-1.0)
    # Under jit the value is unknown: no check, no error.
    jax.jit(lambda r: components.create(_Knobs, rate=r).rate)(-1.0)


def test_a_default_outside_its_range_is_refused_at_declaration():
    with pytest.raises(ValueError, match="outside its own range"):
        components.knob(0.0, "x", low=0, low_open=True)


def test_registry_and_knob_groups():
    registry = components.Registry("widget")
    registry.register("plain", _Entry)
    registry.register("other", _Entry)
    assert registry.names() == ("plain", "other")
    with pytest.raises(ConfigError, match="config.s.kind = 'plian'.*did you mean 'plain'"):
        registry.get("plian", "s.kind")
    group = components.group_defaults(registry)
    assert set(group.keys()) == {"plain", "other"}
    group.plain.rate = 0.3
    components.validate_groups(registry, group, "g", "plain")
    np.testing.assert_allclose(components.chosen_hparams(registry, group, "plain").rate, 0.3)
    group.other.rate = -5.0  # the unchosen component's values are not read
    components.validate_groups(registry, group, "g", "plain")
    with pytest.raises(ConfigError, match=r"config.g.other.rate = -5.0: must be in \(0, inf\)"):
        components.validate_groups(registry, group, "g", "other")
    group.other.rat = 1.0  # but its keys are checked: a typo never waits for the preset
    with pytest.raises(ConfigError, match="config.g.other.rat: unknown key"):
        components.validate_groups(registry, group, "g", "plain")
