"""simgen.toml: every mistake names its key and the fix; a valid file builds its pieces."""

import textwrap

import pytest
import torch

from simgen.errors import ConfigError, SimgenError
from simgen.project import load_project, read_observation

VALID = """
seed = 3
[simulator]
path = "sim_mod:simulate"
[prior]
kind = "box"
low = [0.0, 0.0]
high = [1.0, 2.0]
[parameters]
names = ["a", "b"]
units = ["m", ""]
[observation]
file = "x_o.npy"
"""

SIM = """
import torch

def simulate(theta, generator=None):
    return theta + 0.1 * torch.randn(2, generator=generator)

def no_generator(theta):
    return theta + torch.randn(2)
"""


def _write(tmp_path, text, sim=SIM):
    (tmp_path / "simgen.toml").write_text(textwrap.dedent(text))
    (tmp_path / "sim_mod.py").write_text(sim)
    return tmp_path / "simgen.toml"


def test_a_valid_file_builds_prior_simulator_and_labels(tmp_path):
    import numpy as np

    np.save(tmp_path / "x_o.npy", np.array([0.5, 1.0], dtype=np.float32))
    project = load_project(_write(tmp_path, VALID))
    assert project.seed == 3 and project.train.method == "npe"
    prior = project.make_prior()
    assert prior.sample((5,)).shape == (5, 2)
    sim = project.make_simulator()
    theta = prior.sample((4,))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    x1, x2 = sim(theta, generator=g()), sim(theta, generator=g())
    assert x1.shape == (4, 2) and torch.equal(x1, x2)
    assert project.labels(2) == ["a [m]", "b"]
    assert torch.equal(project.x_o(), torch.tensor([0.5, 1.0]))
    # the stage fingerprints: a training setting does not touch the simulate stage
    assert "train" not in project.fingerprint("simulate")
    assert project.fingerprint("train")["train"]["max_epochs"] == 200


@pytest.mark.parametrize(
    "edit, named",
    [
        (("seed = 3", "sed = 3"), "did you mean 'seed'"),
        (('kind = "box"', 'kind = "boxx"'), "[prior] kind"),
        (("high = [1.0, 2.0]", "high = [1.0]"), "low has 2 entries and high 1"),
        (("high = [1.0, 2.0]", "high = [1.0, -2.0]"), "every low must be below its high"),
        (('path = "sim_mod:simulate"', 'path = "sim_mod.simulate"'), '"module:function"'),
        (('file = "x_o.npy"', 'file = "x_o.txt"'), "[observation] file"),
        (('names = ["a", "b"]', 'names = ["a", "b", "c"]'), "3 names and 2 units"),
        (("[parameters]", "[parameters]\nnames_ = 1"), "unknown key 'names_' in [parameters]"),
        (("seed = 3", "seed = 3\n[train]\nmax_epochs = 'ten'"), "[train] max_epochs = 'ten'"),
        (("seed = 3", "seed = 3\n[train]\nmethod = 'abc'"), "[train] method"),
        (("seed = 3", "seed = 3\n[simulate]\nnum_simulations = 0"), "num_simulations = 0"),
        (("[observation]", "[observaton]"), "[observation] section is missing"),
        (("seed = 3", "seed = [3"), "not valid TOML"),
    ],
)
def test_each_mistake_names_its_key(tmp_path, edit, named):
    with pytest.raises(ConfigError) as info:
        load_project(_write(tmp_path, VALID.replace(*edit)))
    assert named in str(info.value)


def test_imports_and_observations_fail_with_the_fix(tmp_path):
    project = load_project(_write(tmp_path, VALID.replace("sim_mod:simulate", "nomod:simulate")))
    with pytest.raises(ConfigError, match="importing 'nomod'.*put nomod.py in the project"):
        project.make_simulator()
    project = load_project(_write(tmp_path, VALID.replace("sim_mod:simulate", "sim_mod:nope")))
    with pytest.raises(ConfigError, match="has no 'nope'"):
        project.make_simulator()
    with pytest.raises(ConfigError, match="no such file"):
        project.x_o()
    with pytest.raises(ConfigError, match="2 entries but the prior has 3"):
        load_project(
            _write(
                tmp_path,
                VALID.replace("[0.0, 0.0]", "[0.0, 0.0, 0.0]").replace(
                    "[1.0, 2.0]", "[1.0, 2.0, 3.0]"
                ),
            )
        ).make_prior()
    with pytest.raises(ConfigError, match="No project file.*simgen init"):
        load_project(tmp_path / "nowhere" / "simgen.toml")


def test_observation_formats_agree(tmp_path):
    import numpy as np

    x = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    np.save(tmp_path / "a.npy", x)
    torch.save({"x_o": torch.from_numpy(x)}, tmp_path / "a.pt")
    np.savetxt(tmp_path / "a.csv", x[None], delimiter=",")
    values = [read_observation(tmp_path / f"a.{ext}") for ext in ("npy", "pt", "csv")]
    assert all(torch.equal(v, values[0]) for v in values)
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(ConfigError, match="could not be read"):
        read_observation(tmp_path / "bad.npy")


def test_a_one_theta_function_runs_row_by_row_with_a_seed_per_row(tmp_path):
    """``batched = false`` (the default) runs ``FunctionSimulator(fn, vectorized=False)``:
    the same generator gives the same x, another seed other x, two equal θ rows of one call
    get different noise, and each row is what the function gives alone with its row's seed
    (simgen.external)."""
    from simgen.external import FUNCTION_SEEDS, call_one, row_seeds
    from simgen.simulator import FunctionSimulator

    text = VALID.replace('"sim_mod:simulate"', '"sim_mod:no_generator"')
    sim = load_project(_write(tmp_path, text)).make_simulator()
    assert isinstance(sim, FunctionSimulator) and not sim.vectorized
    theta = torch.zeros(3, 2)
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    a, b, c = sim(theta, generator=g(1)), sim(theta, generator=g(1)), sim(theta, generator=g(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])
    seeds = row_seeds(3, g(1), FUNCTION_SEEDS)
    assert all(torch.equal(a[i], call_one(sim.fn, theta[i], seeds[i])) for i in range(3))


PYRO_SIM = """
import pyro
import pyro.distributions as dist
import torch

def model(num_simulations):
    with pyro.plate("sims", num_simulations):
        theta = pyro.sample("theta", dist.Uniform(torch.zeros(2), torch.ones(2)).to_event(1))
        z = pyro.sample("z", dist.Normal(theta, 0.1).to_event(1))
        pyro.sample("obs", dist.Normal(z, 0.1).to_event(1))
"""


def test_a_pyro_model_is_a_project_simulator(tmp_path):
    import simgen
    from simgen.simulator import PyroSimulator

    text = VALID.replace('path = "sim_mod:simulate"', 'path = "sim_mod:model"\nkind = "pyro"')
    text = text.replace("high = [1.0, 2.0]", "high = [1.0, 1.0]")
    project = load_project(_write(tmp_path, text, sim=PYRO_SIM))
    with pytest.raises(SimgenError, match="'x'"):  # the model has no site "x"
        simgen.simulate(project.make_simulator(), project.make_prior(), 6, seed=0)
    text = text.replace('kind = "pyro"', 'kind = "pyro"\nx_site = "obs"')
    project = load_project(_write(tmp_path, text, sim=PYRO_SIM))
    sim = project.make_simulator()
    assert isinstance(sim, PyroSimulator)
    sims = simgen.simulate(sim, project.make_prior(), 6, seed=0)
    assert sims.x.shape == (6, 2) and torch.isfinite(sims.x).all()
    again = simgen.simulate(sim, project.make_prior(), 6, seed=0)
    assert torch.equal(sims.x, again.x)
    with pytest.raises(ConfigError, match="kind"):
        load_project(_write(tmp_path, text.replace('"pyro"', '"julia"'), sim=PYRO_SIM))
