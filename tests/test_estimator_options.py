"""Estimator options: every family rejects options it does not have, the vector-field
families' network and solver options go through validated configs, and model files saved in
the current spec format load and give the same densities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import simgen
from simgen.errors import ConfigError
from simgen.estimators._nets import NetConfig
from simgen.estimators.diffusion import Diffusion
from simgen.estimators.flow_matching import FlowMatching
from simgen.estimators.flows import MAF, RealNVP
from simgen.estimators.ode import SolverConfig
from simgen.estimators.registry import ESTIMATORS, build_estimator, estimator_class
from simulators import gaussian_linear

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["maf", "realnvp"])
@pytest.mark.parametrize("option", [{"bins": 4}, {"passes": None}])
def test_spline_options_on_affine_flows_raise(name, option):
    """``bins``/``passes`` belong to ``nsf``; ``maf`` and ``realnvp`` must not drop them."""
    (key,) = option
    task = gaussian_linear.make(dim=2)
    with pytest.raises(ConfigError, match=key) as info:
        build_estimator(name, 2, (2,), **option)
    message = str(info.value)
    assert repr(name) in message and "transforms" in message and "hidden_features" in message
    with pytest.raises(ConfigError, match=key):
        simgen.NPE(task.prior, estimator=name, **option)  # fails before any training
    build_estimator("nsf", 2, (2,), **option)  # the spline flow has both


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_family_rejects_an_unknown_option(name):
    with pytest.raises(ConfigError, match="no_such_option") as info:
        build_estimator(name, 2, (2,), no_such_option=1)
    for valid in estimator_class(name).option_names():
        assert valid in str(info.value)


@pytest.mark.parametrize("cls", [MAF, RealNVP, FlowMatching, Diffusion])
def test_families_reject_unknown_keywords_when_built_directly(cls):
    with pytest.raises(ConfigError, match="bins"):
        cls(2, (2,), bins=8)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_features", []),
        ("hidden_features", [32, 0]),
        ("hidden_features", 64),
        ("time_features", 0),
        ("architecture", "transformer"),
        ("time_embedding", "learned"),
        ("context_dropout", 1.0),
    ],
)
def test_net_config_names_the_bad_field(field, value):
    with pytest.raises(ConfigError, match=field):
        NetConfig(**{field: value})
    for cls in (FlowMatching, Diffusion):
        with pytest.raises(ConfigError, match=field):
            cls(2, (2,), **{field: value})


def test_keywords_map_onto_the_configs():
    """Keywords and config objects describe the same model; keywords override a config."""
    net = NetConfig(hidden_features=(16, 16), time_features=8, architecture="mlp")
    by_config = FlowMatching(2, (3,), net_config=net, solver_config=SolverConfig(steps=5))
    by_keywords = FlowMatching(
        2, (3,), hidden_features=[16, 16], time_features=8, architecture="mlp", steps=5
    )
    assert by_config.net_config == by_keywords.net_config == net
    assert by_config.options == by_keywords.options
    assert by_config.solver.steps == 5 and by_config.options["hidden_features"] == [16, 16]
    mixed = Diffusion(2, (3,), net_config=net, time_features=4, steps=7)
    assert mixed.net_config == NetConfig((16, 16), 4, "mlp") and mixed.solver.steps == 7
    # Each family keeps its own solver default.
    assert FlowMatching(2, (3,)).solver.steps == 16 and Diffusion(2, (3,)).solver.steps == 50
    with pytest.raises(ConfigError, match="net_config"):
        FlowMatching(2, (3,), net_config={"hidden_features": [16]})


@pytest.mark.parametrize("option", [{"repeats": 0}, {"gaussian_baseline": "sometimes"}])
def test_shared_family_options_validated(option):
    (key,) = option
    for cls in (FlowMatching, Diffusion):
        with pytest.raises(ConfigError, match=key):
            cls(2, (2,), **option)


@pytest.mark.parametrize("name", ["nsf", "maf", "realnvp", "flow_matching", "diffusion"])
def test_model_files_in_the_current_format_load(name):
    """Model files written by the spec format in use load with the same densities.

    The files in ``tests/data`` are small NPE models (2-D gaussian_linear, 200 simulations,
    2 epochs) and their log-densities at two points; the ODE families' densities use the
    exact divergence here (D = 2), so they are deterministic.
    """
    ref = json.loads((DATA / "npe_v1_reference.json").read_text())
    post = simgen.load(DATA / f"npe_{name}_v1.model")
    theta, x_o = torch.tensor(ref["theta"]), torch.tensor(ref["x_o"])
    logp = post.log_prob(theta, x=x_o).detach()
    torch.testing.assert_close(logp, torch.tensor(ref[f"{name}_log_prob"]), atol=1e-4, rtol=0)
