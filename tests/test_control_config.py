"""The control programs read their config once, at the boundary (`control_config.spec_from_config`).

Below it (`loop.train`, the programs' ``make_trainer`` and trainers) only typed specs travel; the
programs' knobs (`ppo.HParams`, `trpo.HParams`) are declared once with `kltrust.components.knob`,
and the config's defaults, range checks and parsing derive from those declarations, with the
messages the control CLIs have always printed.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import pathlib

import ml_collections
import numpy as np
import pytest

from configs import ppo as ppo_configs
from configs import trpo as trpo_configs
from kltrust import components, controllers
from kltrust.errors import ConfigError
from kltrust.train import common, control_config, loop, ppo, trpo

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Library modules below the config boundary: they take specs, never an ml_collections config.
BELOW_BOUNDARY = ("kltrust/train/loop.py", "kltrust/train/ppo.py", "kltrust/train/trpo.py",
                  "kltrust/train/common.py")


@pytest.mark.parametrize("path", BELOW_BOUNDARY)
def test_library_below_the_boundary_does_not_read_the_config(path):
    """No ml_collections import, and no public function with a ``config`` parameter (a
    re-export of the config layer's checks for another module is not a use)."""
    tree = ast.parse((ROOT / path).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name and name.startswith("ml_collections")], path
    functions = [node for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    takes_config = [f.name for f in functions
                    if any(a.arg == "config" for a in f.args.args + f.args.kwonlyargs)]
    assert not takes_config, f"{path}: {takes_config} take a config"


def test_loop_train_refuses_a_config():
    config = ppo_configs.get_config("cartpole_clip")
    with pytest.raises(TypeError, match=r"loop.train takes a ControlSpec \(kltrust.train."
                                        r"control_config.spec_from_config\(config\)\), not a "
                                        r"ConfigDict"):
        loop.train(config, progress=False)


def test_make_trainer_takes_the_static_spec():
    spec = control_config.spec_from_config(trpo_configs.get_config("cartpole_trpo"))
    trainer = trpo.make_trainer(spec.static)
    assert trainer.static is spec.static
    assert list(inspect.signature(ppo.make_trainer).parameters) == ["static", "mesh"]


@pytest.mark.parametrize("module,preset", [(ppo_configs, "pendulum_kl_pid"),
                                           (trpo_configs, "acrobot_trpo_ref")])
def test_the_spec_holds_what_the_config_said(module, preset):
    config = module.get_config(preset)
    config.seed, config.num_seeds = 5, 3
    config.guards.max_nonfinite_updates, config.keep_checkpoints = 7, 4
    spec = control_config.spec_from_config(config)
    assert spec.algorithm == config.algorithm
    np.testing.assert_array_equal(spec.seeds, [5, 6, 7])
    assert dict(spec.mesh) == config.mesh.to_dict()
    assert (spec.max_nonfinite_updates, spec.keep_checkpoints) == (7, 4)
    assert spec.checkpoint_every_chunks == config.checkpoint_every_chunks
    assert spec.static.num_updates == config.total_timesteps // (config.num_envs * config.num_steps)
    # What the workdir claim records: the config's canonical JSON, as before the spec existed,
    # less ``logging`` (where scalars go, not what is computed: kltrust.tracking.identity_json).
    full = json.loads(config.to_json_best_effort(indent=2, sort_keys=True))
    assert "logging" in full
    del full["logging"]
    assert spec.config_json == json.dumps(full, indent=2, sort_keys=True) + "\n"
    for name in components.knobs(type(spec.hparams)):
        assert np.float32(getattr(spec.hparams, name)) == np.float32(config.hparams[name]), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 0  # type: ignore[misc]


def test_the_chosen_controllers_knobs_travel_in_the_spec():
    config = ppo_configs.get_config("cartpole_kl_pid")
    config.hparams.controller.pid.kp = 3.0
    hp = control_config.spec_from_config(config).hparams
    assert isinstance(hp.controller, controllers.get("pid").hparams)
    assert float(hp.controller.kp) == 3.0 and float(hp.controller.ki) == 1.0


def test_defaults_come_from_the_knob_declarations():
    """Each hparams default of a ppo/trpo config is its knob's declared default (the preset
    files and flags keep their keys and values), the controller groups the registry's."""
    for defaults, cls in ((control_config.ppo_defaults(), ppo.HParams),
                          (control_config.trpo_defaults(), trpo.HParams)):
        declared = {name: spec.default for name, spec in components.knobs(cls).items()}
        plain = {k: v for k, v in defaults.hparams.to_dict().items() if k != "controller"}
        assert plain == declared
    assert (control_config.ppo_defaults().hparams.controller.to_dict()
            == components.group_defaults(controllers.REGISTRY).to_dict())
    # The values the presets always had (a changed declaration would silently move every run).
    assert control_config.ppo_defaults().hparams.learning_rate == 2.5e-4
    assert control_config.trpo_defaults().hparams.gae_lambda == 0.97


def _outside(spec: components.Knob) -> float:
    return spec.low if spec.low_open else spec.low - 1.0


def _old_interval(spec: components.Knob) -> str:
    """The interval as the control checks have always printed it: ``(0.0, inf)``."""
    top_open = spec.high_open or (spec.high == math.inf and not spec.allow_inf)
    return (f"{'(' if spec.low_open else '['}{spec.low}, {spec.high}"
            f"{')' if top_open else ']'}")


def _knob_cases():
    # Presets under which every knob is read (clipping, a penalty, early stopping, the reference).
    cases = []
    for family, cls in (("ppo", ppo.HParams), ("trpo", trpo.HParams)):
        for name, spec in components.knobs(cls).items():
            cases.append((family, name, _outside(spec), _old_interval(spec)))
    return cases


def _reading_everything(family: str) -> ml_collections.ConfigDict:
    if family == "ppo":
        config = ppo_configs.get_config("cartpole_clip_kl")
        config.variant.kl_penalty, config.early_stop = "fixed", True  # β may be 0 (not adaptive)
        config.variant.clip_value = True  # vf_clip_eps
    else:
        config = trpo_configs.get_config("cartpole_trpo_ref")
    config.normalize_observations = True  # obs_clip
    return config


@pytest.mark.parametrize("family,name,value,interval", _knob_cases())
def test_every_declared_knob_is_range_checked_with_the_old_message(family, name, value,
                                                                   interval):
    config = _reading_everything(family)
    config.hparams[name] = value
    with pytest.raises(ConfigError) as error:
        control_config.spec_from_config(config)
    assert str(error.value) == f"config.hparams.{name} = {value!r}: must be in {interval}."


def test_unread_knobs_are_only_required_to_be_finite():
    """As before the declarations: clip_eps without clipping, β without a penalty, target_kl
    without early stopping and TRPO's kl_budget without the reference are not range-checked;
    nor are obs_clip without normalisation and vf_clip_eps without value clipping."""
    config = ppo_configs.get_config("cartpole_none")
    config.hparams.clip_eps, config.hparams.beta, config.hparams.target_kl = 0.0, -1.0, 0.0
    config.hparams.obs_clip, config.hparams.vf_clip_eps = 0.0, -1.0
    control_config.spec_from_config(config)
    config.hparams.target_kl = math.nan
    with pytest.raises(ConfigError, match=r"^config.hparams.target_kl = nan: must be a finite "
                                          r"number\.$"):
        control_config.spec_from_config(config)
    config = trpo_configs.get_config("cartpole_trpo")
    config.hparams.kl_budget = 0.0
    control_config.spec_from_config(config)


def test_a_multiplicative_controller_needs_a_positive_beta():
    config = ppo_configs.get_config("cartpole_kl_adaptive")
    for beta in (0.0, -1.0):
        config.hparams.beta = beta
        with pytest.raises(ConfigError) as error:
            control_config.spec_from_config(config)
        assert str(error.value) == f"config.hparams.beta = {beta!r}: must be in (0.0, inf)."


def test_a_trainer_refuses_a_mesh_its_batch_does_not_fit():
    """The spec was checked against its config's mesh; a trainer given another mesh checks again
    (with the config check's words)."""
    static = control_config.spec_from_config(ppo_configs.get_config("cartpole_clip"),
                                              batch_shards=1).static

    class _Mesh:  # only the axis sizes are read
        def __init__(self, data: int, fsdp: int = 1):
            self.shape = {"runs": 1, "data": data, "fsdp": fsdp}

    common.check_fits_mesh(static.num_envs, _Mesh(2, 2))  # 4 environments on 4 shards: fine
    with pytest.raises(ConfigError, match=r"^config.num_envs = 4: must be divisible by the "
                                          r"mesh's batch shards, data × fsdp = 8"):
        common.check_fits_mesh(static.num_envs, _Mesh(8))


def test_components_group_fields():
    """A `components.group` field: its config is every component's knob group; `validate` checks
    the chosen one's ranges and every key; `from_config` builds the chosen one's HParams."""
    group = components.config_defaults(ppo.HParams).controller
    assert group.to_dict() == components.group_defaults(controllers.REGISTRY).to_dict()
    node = components.config_defaults(ppo.HParams)
    node.controller.pid.kp = -1.0  # pid's kp is >= 0
    components.validate(ppo.HParams, node, "hparams", chosen={"controller": "adaptive"})
    with pytest.raises(ConfigError, match=r"^config.hparams.controller.pid.kp = -1.0: must be in"):
        components.validate(ppo.HParams, node, "hparams", chosen={"controller": "pid"})
    node.controller.pid.kq = 1.0
    with pytest.raises(ConfigError, match=r"^config.hparams.controller.pid.kq: unknown key"):
        components.validate(ppo.HParams, node, "hparams", chosen={"controller": "adaptive"})
    hp = components.from_config(ppo.HParams, components.config_defaults(ppo.HParams),
                                chosen={"controller": "proportional"})
    assert isinstance(hp.controller, controllers.get("proportional").hparams)
