"""Where simgen's NPE and sbi 0.27's NPE(nsf) differ on gaussian_linear_uniform.

A factorial decomposition on shared simulations: a *network* (simgen's zuko NSF, sbi's
nflows NSF from ``build_nsf``, or a copy of ``build_nsf`` with one difference changed) is
trained by a *loop* (simgen's :func:`simgen.training.fit` or sbi's ``NPE.train``) on the
training simulations of :func:`benchmarks.evaluation.training_data`, and scored as
:func:`benchmarks.evaluation.evaluate_cell` scores a cell: at each observation of the set,
``--c2st-samples`` draws (torch seeded ``1000 * seed + i``, draws outside the prior's box
rejected) against the first as many draws of the cached reference. Every variant is in
:data:`VARIANTS`; cells are kept in ``benchmarks/cells/glu_study/`` keyed by variant, set,
budget, seed and the code it ran (the hash of simgen's source and sbi's version).

    OMP_NUM_THREADS=1 python -m benchmarks.glu_study --variants sbi/sbi sbi/simgen \\
        simgen/sbi simgen/simgen --budget 10000 --seed 0 --set tuning

The nflows spline's parameters (``nflows_nsf``): the conditioner of each coupling transform
maps the identity half and the context to ``3K - 1`` numbers per transformed feature; the
bin widths and heights are ``softmax(w / sqrt(H))`` (``H`` the conditioner's width, the
``softmax_scale`` ablation drops the division), the inner derivatives ``softplus(d) +
10^-3`` and the two boundary derivatives 1 (linear tails beyond ``[-B, B]``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from functools import partial

import torch
from torch import Tensor, nn

from benchmarks import cell_files, evaluation, harness, warm_up_torch
from simgen.diagnostics.c2st import c2st
from simgen.estimators.registry import build_estimator
from simgen.losses import NPELoss
from simgen.posterior import DirectPosterior
from simgen.training import TrainConfig, fit

TASK = "gaussian_linear_uniform"
#: sbi 0.27's ``NPE.train`` defaults, for simgen's loop in sbi's settings.
SBI_TRAIN = {"batch_size": 200, "learning_rate": 5e-4, "lr_decay": 1.0}


# -- networks: each ``(theta_train, x_train, **options) -> (module, kind)`` ----------------------
def simgen_net(theta: Tensor, x: Tensor, **options) -> nn.Module:
    """simgen's NSF (``build_estimator("nsf")``), z-scored on ``theta``, ``x``."""
    net = build_estimator("nsf", theta.shape[1], x.shape[1:], **options)
    net.fit_standardization(theta, x)
    return net


class MLPConditioner(nn.Module):
    """An MLP on ``[inputs, context]`` with ReLU (the shape of zuko's coupling conditioner),
    exposing ``hidden_features`` so nflows scales its softmax inputs as for the ResidualNet."""

    def __init__(self, in_features, out_features, hidden_features, context_features, layers=2):
        super().__init__()
        self.hidden_features = hidden_features
        sizes = [in_features + context_features, *[hidden_features] * layers]
        mods: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(sizes[-1], out_features))

    def forward(self, inputs, context=None):
        return self.net(torch.cat((inputs, context), dim=1))


class Unscaled(nn.Module):
    """A conditioner without ``hidden_features``: nflows then feeds its outputs to the
    softmax unscaled (zuko's convention)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, inputs, context=None):
        return self.inner(inputs, context)


def _resnet(in_features, out_features, hidden, context, blocks, gate, zero_init):
    from nflows.nn import nets

    net = nets.ResidualNet(in_features, out_features, hidden, context, num_blocks=blocks)
    for block in net.blocks:
        if not gate:  # the context enters the initial layer only
            block.context_layer = None
            block.forward = partial(_ungated_block, block)
        if not zero_init:
            block.linear_layers[-1].reset_parameters()
    return net


def _ungated_block(block, inputs, context=None):
    temps = block.linear_layers[0](block.activation(inputs))
    return inputs + block.linear_layers[1](block.activation(temps))


def nflows_nsf(
    theta: Tensor,
    x: Tensor,
    conditioner: str = "resnet",
    hidden_features: int = 50,
    num_blocks: int = 2,
    num_transforms: int = 5,
    num_bins: int = 10,
    tail_bound: float = 3.0,
    softmax_scale: bool = True,
    context_gate: bool = True,
    zero_init: bool = True,
    lu: bool = True,
) -> nn.Module:
    """sbi 0.27's ``build_nsf`` with its parts exposed: at the defaults the same modules, in
    the same order, as ``build_nsf(theta, x)`` (so the same initial weights from one seed)."""
    from nflows import flows, transforms
    from sbi.neural_nets.estimators import NFlowsFlow
    from sbi.neural_nets.net_builders.flow import _prepare_y_embedding, get_base_dist
    from sbi.utils.sbiutils import standardizing_transform
    from sbi.utils.torchutils import create_alternating_binary_mask

    d, c = theta.shape[1], x[0].numel()

    def make(in_features, out_features):
        if conditioner == "mlp":
            net = MLPConditioner(in_features, out_features, hidden_features, c)
        else:
            net = _resnet(in_features, out_features, hidden_features, c, num_blocks,
                          context_gate, zero_init)  # fmt: skip
        return net if softmax_scale else Unscaled(net)

    layers: list = []
    for i in range(num_transforms):
        layers.append(
            transforms.PiecewiseRationalQuadraticCouplingTransform(
                mask=create_alternating_binary_mask(features=d, even=(i % 2 == 0)),
                transform_net_create_fn=make,
                num_bins=num_bins,
                tails="linear",
                tail_bound=tail_bound,
                apply_unconditional_transform=False,
            )
        )
        if lu:
            layers.append(transforms.LULinear(d, identity_init=True))
    layers = [standardizing_transform(theta, False), *layers]
    embedding = _prepare_y_embedding("independent", x, nn.Identity())
    net = flows.Flow(transforms.CompositeTransform(layers), get_base_dist(d), embedding)
    return NFlowsFlow(net, input_shape=theta[0].shape, condition_shape=x[0].shape)


def sbi_net(theta: Tensor, x: Tensor, **options) -> nn.Module:
    """sbi 0.27's own ``build_nsf`` (what ``NPE(density_estimator="nsf")`` trains)."""
    from sbi.neural_nets.net_builders.flow import build_nsf

    return build_nsf(theta, x, **options)


def _sbi_adapter(net: nn.Module) -> nn.Module:
    """simgen's estimator behind sbi's ``ConditionalDensityEstimator`` interface."""
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator

    class Adapter(ConditionalDensityEstimator):
        def log_prob(self, input, condition, **kwargs):  # (S, B, D), (B, ...) -> (S, B)
            return self.net(condition).log_prob(input)

        def loss(self, input, condition, **kwargs):
            return self.net.loss(input, condition)

        def sample(self, sample_shape, condition, **kwargs):
            n = math.prod(sample_shape)
            return self.net.draw(n, condition).reshape(*sample_shape, len(condition), -1)

    shape = torch.Size([net.target_dim])
    return Adapter(net, input_shape=shape, condition_shape=torch.Size(net.context_shape))


NETS = {"simgen": simgen_net, "sbi": sbi_net, "nflows": nflows_nsf}


# -- loops: each ``(net_name, options, theta, x, seed, train) -> (sampler, epochs)`` ---------------
def _sampler(net: nn.Module, name: str, prior):
    """``(n, x_o) -> (n, D)`` draws inside the prior's box, rejection as both libraries do."""
    if name == "simgen":
        posterior = DirectPosterior(net, prior, support="reject")
        return lambda n, x_o: posterior.sample((n,), x=x_o)
    low, high = prior.low, prior.high

    def sample(n, x_o):
        kept, have = [], 0
        while have < n:
            draws = net.sample((2 * n,), condition=x_o.reshape(1, -1))[:, 0]
            inside = draws[((draws >= low) & (draws <= high)).all(-1)]
            kept.append(inside)
            have += len(inside)
        return torch.cat(kept)[:n]

    return sample


class _SbiLoss(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, theta, x):
        return self.net.loss(theta, x).mean()


def simgen_loop(name, options, theta, x, seed, prior, **train):
    """simgen's ``fit`` (its split, Adam, clipping, stopping), the net built on all the
    simulations as ``NPE.fit`` does, under ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    net = NETS[name](theta, x, **options)
    loss = NPELoss(net) if name == "simgen" else _SbiLoss(net)
    history = fit(loss, theta, x, TrainConfig(seed=seed, progress=False, **train))
    net.eval()
    return _sampler(net, name, prior), history.epochs


def sbi_loop(name, options, theta, x, seed, prior, **train):
    """sbi 0.27's ``NPE.train`` (its split, Adam, clipping, stopping), the net built by sbi
    on the training split, after ``torch.manual_seed(seed)`` as ``evaluation._sbi``."""
    import sbi.inference as si

    def build(batch_theta, batch_x):
        net = NETS[name](batch_theta, batch_x, **options)
        return _sbi_adapter(net) if name == "simgen" else net

    torch.manual_seed(seed)
    inference = si.NPE(prior=evaluation._sbi_prior(prior), density_estimator=build,
                       show_progress_bars=False)  # fmt: skip
    net = inference.append_simulations(theta, x).train(show_train_summary=False, **train)
    net.eval()
    inner = net.net if name == "simgen" else net
    return _sampler(inner, name, prior), inference._summary["epochs_trained"][-1]


LOOPS = {"simgen": simgen_loop, "sbi": sbi_loop}

#: name -> (network, its options, loop, its options). ``<net>/<loop>`` are the four corners
#: of the factorial; ``nflows:<what>/<loop>`` change one part of sbi's network.
VARIANTS: dict[str, tuple[str, dict, str, dict]] = {
    "sbi/sbi": ("sbi", {}, "sbi", {}),
    "sbi/simgen": ("sbi", {}, "simgen", {}),
    "sbi/simgen-sbi-settings": ("sbi", {}, "simgen", SBI_TRAIN),
    "simgen/simgen": ("simgen", {}, "simgen", {}),
    "simgen/sbi": ("simgen", {}, "sbi", {}),
    "nflows/simgen": ("nflows", {}, "simgen", {}),
    "nflows:mlp/simgen": ("nflows", {"conditioner": "mlp", "hidden_features": 64}, "simgen", {}),
    "nflows:unscaled/simgen": ("nflows", {"softmax_scale": False}, "simgen", {}),
    "nflows:no-gate/simgen": ("nflows", {"context_gate": False}, "simgen", {}),
    "nflows:no-zero-init/simgen": ("nflows", {"zero_init": False}, "simgen", {}),
    "nflows:bound5-bins8/simgen": ("nflows", {"tail_bound": 5.0, "num_bins": 8}, "simgen", {}),
    "nflows:mlp-unscaled/simgen": (
        "nflows",
        {"conditioner": "mlp", "hidden_features": 64, "softmax_scale": False},
        "simgen",
        {},
    ),
}


def _code() -> str:
    import sbi

    return f"{evaluation._code_key('simgen')}-sbi-{sbi.__version__}"


def _path(variant, set_name, budget, seed, num_samples):
    safe = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in variant)
    name = f"{set_name}-n{budget}-{safe}-s{seed}-c{num_samples}-{_code()}.json"
    return harness.CELLS / "glu_study" / name


def run_cell(variant: str, set_name: str, budget: int, seed: int, num_samples: int) -> dict:
    """Train one variant on (budget, seed)'s simulations and score every observation."""
    path = _path(variant, set_name, budget, seed, num_samples)
    if (cached := cell_files.read_cell(path)) is not None:
        return cached
    task = harness.load_task(TASK)
    _, xs = harness.observations(TASK, set_name)
    refs = [harness.reference(TASK, set_name, i) for i in range(len(xs))]
    theta, x = evaluation.training_data(task, budget, seed)
    net_name, net_options, loop, train = VARIANTS[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.process_time()
        sample, epochs = LOOPS[loop](net_name, net_options, theta, x, seed, task.prior, **train)
        train_s = time.process_time() - start
        scores = []
        for i, (x_o, ref) in enumerate(zip(xs, refs)):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(1000 * seed + i)
                draws = sample(num_samples, x_o)
            scores.append(float(c2st(ref["samples"][:num_samples], draws, seed=0)))
    cell = {
        "variant": variant, "set": set_name, "budget": budget, "seed": seed,
        "code": _code(), "epochs": int(epochs), "train_cpu_s": train_s, "c2st": scores,
    }  # fmt: skip
    cell_files.write_cell(path, cell, indent=1)
    return cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=["sbi/sbi", "simgen/simgen"])
    parser.add_argument("--set", choices=list(harness.SETS), default="tuning")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--c2st-samples", type=int, default=1000)
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    torch.set_num_threads(1)
    warm_up_torch()
    for variant in args.variants:
        for seed in args.seeds:
            cell = run_cell(variant, args.set, args.budget, seed, args.c2st_samples)
            scores = cell["c2st"]
            print(
                json.dumps(
                    {
                        "variant": variant,
                        "seed": seed,
                        "c2st": round(sum(scores) / len(scores), 4),
                        "worst": round(max(scores), 4),
                        "epochs": cell["epochs"],
                        "train_cpu_s": round(cell["train_cpu_s"], 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
