"""Fault battery: hostile or damaged model files are refused before anything is built.

Each case starts from a real saved NPE model, alters its spec or its weights the way a
damaged download or a hand-edited file would, and checks that ``simgen.load`` raises a
:class:`~simgen.errors.ModelFileError` naming what is wrong, and allocates nothing big.
"""

import json
import resource
import warnings

import pytest
import torch

import simgen
from simgen.errors import ModelFileError
from simgen.serialization import BUDGET_SLACK

PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    theta = PRIOR.sample((200,))
    x = theta + 0.1 * torch.randn(theta.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = simgen.NPE(PRIOR, estimator="maf").fit(theta, x, max_epochs=1, seed=0)
    path = tmp_path_factory.mktemp("models") / "npe.simgen"
    posterior.save(path)
    return path


def _altered(saved, tmp_path, spec=None, state=None):
    payload = torch.load(saved, weights_only=True)
    if spec is not None:
        decoded = json.loads(payload["spec"])
        spec(decoded)
        payload["spec"] = json.dumps(decoded)
    if state is not None:
        state(payload["state_dict"])
    path = tmp_path / "altered.simgen"
    torch.save(payload, path)
    return path


def test_the_unaltered_file_loads(saved):
    posterior = simgen.load(saved)
    assert posterior.sample((5,), x=torch.zeros(2)).shape == (5, 2)


def _set(field, value):
    def edit(spec):
        target = spec
        *parents, last = field.split(".")
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


SPEC_CASES = [
    ("estimator.context_shape", [400_000_000], "estimator.context_shape"),
    ("estimator.target_dim", 300_000_000, "estimator.target_dim"),
    ("estimator.options.hidden_features", [30_000, 30_000], "MB"),
    ("estimator.options.transforms", "five", "corrupt or inconsistent"),
    ("estimator.options.colour", "blue", "colour"),
    ("estimator.name", "no_such_family", "no_such_family"),
    ("estimator.name", 3, "estimator.name"),
    ("x_shape", [-2], "x_shape"),
    ("theta_dim", "two", "theta_dim"),
    ("default_x", [[1.0, 2.0, 3.0]], "default_x"),
    ("posterior", "telepathic", "posterior"),
    ("surprise", {"a": 1}, "surprise"),
    ("prior", {"type": "box", "low": "x"}, "corrupt or inconsistent"),
]


@pytest.mark.parametrize("field, value, named", SPEC_CASES)
def test_a_hostile_spec_field_is_named(saved, tmp_path, field, value, named):
    path = _altered(saved, tmp_path, spec=_set(field, value))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelFileError, match=named):
        simgen.load(path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb * 1024 < 2 * BUDGET_SLACK  # refused before the memory was taken


def test_a_missing_field_is_named(saved, tmp_path):
    path = _altered(saved, tmp_path, spec=lambda s: s.pop("estimator"))
    with pytest.raises(ModelFileError, match="estimator"):
        simgen.load(path)


def test_deep_nesting_is_refused(saved, tmp_path):
    deep = []
    for _ in range(100):
        deep = [deep]
    path = _altered(saved, tmp_path, spec=_set("history", {"deep": deep}))
    with pytest.raises(ModelFileError, match="nested"):
        simgen.load(path)
    payload = torch.load(saved, weights_only=True)
    payload["spec"] = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON reader goes
    torch.save(payload, tmp_path / "deeper.simgen")
    with pytest.raises(ModelFileError, match="nested"):
        simgen.load(tmp_path / "deeper.simgen")


def _scale_key(state):
    return next(k for k in state if k.endswith("context_standardizer.scale"))


@pytest.mark.parametrize(
    "value, named", [(float("nan"), "NaN or inf"), (0.0, "zeros"), (float("inf"), "NaN or inf")]
)
def test_bad_buffers_are_named(saved, tmp_path, value, named):
    def damage(state):
        state[_scale_key(state)][0] = value

    path = _altered(saved, tmp_path, state=damage)
    with pytest.raises(ModelFileError, match=f"context_standardizer.scale.*{named}"):
        simgen.load(path)


def test_weights_of_another_shape_are_refused(saved, tmp_path):
    def widen(state):
        key = next(k for k in state if k.endswith("weight"))
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)

    with pytest.raises(ModelFileError, match="(?s)corrupt or inconsistent.*size mismatch"):
        simgen.load(_altered(saved, tmp_path, state=widen))


def test_a_weight_that_is_not_a_tensor_is_refused(saved, tmp_path):
    def replace(state):
        state[_scale_key(state)] = 3

    with pytest.raises(ModelFileError, match="not a tensor"):
        simgen.load(_altered(saved, tmp_path, state=replace))


@pytest.mark.parametrize("device", ["gpu0", "cuda:7", "tpu", 3.5])
def test_an_unknown_device_is_named(saved, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight CUDA devices")
    with pytest.raises(ModelFileError, match="device"):
        simgen.load(saved, device=device)


def test_a_path_with_a_tilde_is_under_home(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(saved.parent))
    assert simgen.load(f"~/{saved.name}").theta_dim == 2
