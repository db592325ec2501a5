"""MCMCConfig: validation, the thinning and chain-count rules, and how NLE/NRE take it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import simgen
from simgen.errors import ConfigError
from simgen.inference import NLE, NRE
from simgen.mcmc import MCMCConfig

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_chains", 1),
        ("num_chains", 2.0),
        ("num_chains", True),
        ("warmup", -1),
        ("thin", 0),
        ("method", "gibbs"),
        ("sampler_options", [("num_steps", 4)]),
        ("rhat_threshold", 1.0),
        ("rhat_threshold", "1.1"),
    ],
)
def test_invalid_fields_raise_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        MCMCConfig(**{field: value})
    with pytest.raises(ConfigError, match=field):
        MCMCConfig().replace(**{field: value})


def test_frozen_defaults_and_replace() -> None:
    config = MCMCConfig()
    assert (config.num_chains, config.warmup, config.thin, config.method) == (50, 100, None, "rwm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.warmup = 5  # type: ignore[misc]
    assert config.replace(warmup=5).warmup == 5 and config.warmup == 100
    with pytest.raises(ConfigError, match="Unknown MCMC option.*chains"):
        config.replace(chains=4)


def test_thinning_rule() -> None:
    assert MCMCConfig().thin_for(1) == 10 and MCMCConfig().thin_for(4) == 20
    assert MCMCConfig(method="slice").thin_for(4) == 1
    assert MCMCConfig(method="hmc").thin_for(4) == 1
    assert MCMCConfig(thin=3).thin_for(4) == 3


def test_chain_count_rule() -> None:
    config = MCMCConfig(num_chains=50)
    assert config.chains_for(100) == 4  # SBC-sized: 4 chains of 25 draws
    assert config.chains_for(1000) == 40
    assert config.chains_for(10_000) == 50
    assert config.chains_for(10, explicit=True) == 50
    assert MCMCConfig(method="nuts").chains_for(1000) == 4
    assert MCMCConfig(method="nuts", num_chains=6).chains_for(10, explicit=True) == 6


def test_file_round_trip_and_older_fields() -> None:
    config = MCMCConfig(num_chains=8, thin=3, method="hmc", sampler_options={"num_steps": 4})
    assert MCMCConfig.from_dict(config.to_dict()) == config
    # Files store {"num_chains", "warmup", "thin", "method"} at least; missing fields default.
    old = MCMCConfig.from_dict({"num_chains": 12, "warmup": 30, "thin": None, "method": "slice"})
    assert old == MCMCConfig(num_chains=12, warmup=30, method="slice")


def test_nle_and_nre_take_a_config_and_the_keyword_arguments() -> None:
    config = MCMCConfig(num_chains=8, method="slice")
    assert NLE(PRIOR, mcmc=config).mcmc == config
    assert NRE(PRIOR, mcmc=config).mcmc == config
    legacy = NLE(PRIOR, num_chains=12, warmup=30, thin=7, mcmc_method="hmc").mcmc
    assert legacy == MCMCConfig(num_chains=12, warmup=30, thin=7, method="hmc")
    # A keyword argument overrides that field of a given config.
    assert NRE(PRIOR, mcmc=config, warmup=10).mcmc == config.replace(warmup=10)
    assert NLE(PRIOR).mcmc == NRE(PRIOR).mcmc == MCMCConfig()
    with pytest.raises(ConfigError, match="warmup"):
        NLE(PRIOR, warmup=-1)
    with pytest.raises(ConfigError, match="method"):
        NRE(PRIOR, mcmc_method="gibbs")
    with pytest.raises(ConfigError, match="MCMCConfig"):
        NLE(PRIOR, mcmc={"num_chains": 4})  # type: ignore[arg-type]
