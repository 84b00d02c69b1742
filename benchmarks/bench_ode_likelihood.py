"""The probability-flow ODE likelihood of a trained toy run: tolerance, batch size and a scipy reference, side by side.

    python benchmarks/bench_ode_likelihood.py RUN_DIR [--test-points 2000] [--seed 0] [--reference-points 40]

Prints one table: for each (rtol = atol, batch size) the NLL in nats of data space on ``pyddpm-eval``'s true
points (seed + 2, so the figures are those of `pyddpm-eval RUN --likelihood ode`), its paired gap to the truth,
the mean network calls per point and the wall-clock seconds (2 threads); then, on the first ``--reference-points``
points, dopri5 at the default tolerance against scipy's DOP853 at rtol = atol = 1e-9 on the same right-hand side.
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from pyddpm.data import DataTransform, toy_distribution
from pyddpm.evaluate.ode_likelihood import ContinuousSchedule, divergence, ode_log_likelihood
from pyddpm.store import load_model


def scipy_log_density(model, x: torch.Tensor, rtol: float) -> torch.Tensor:
    """log p_{s0}(x) per point by scipy's DOP853, one point at a time, with the exact divergence (the reference)."""
    schedule = ContinuousSchedule(model)
    dims = x.shape[1]
    out = []
    for point in x:
        def rhs(s, y):
            beta, sigma = schedule.beta_at(s), schedule.sigma_at(s)
            xg = torch.tensor(y[:dims], dtype=torch.float32)[None].requires_grad_(True)
            with torch.enable_grad():
                eps = model.network(xg, torch.full((1, 1), schedule.network_time(s)))
                div = float(divergence(eps, xg, None)[0, 0])
            drift = -0.5 * beta * (y[:dims] - eps.detach().double().numpy()[0] / sigma)
            return np.concatenate([drift, [-0.5 * beta * (dims - div / sigma)]])

        sol = solve_ivp(rhs, (schedule.start, 1.0), np.concatenate([point.numpy(), [0.0]]), method="DOP853",
                        rtol=rtol, atol=rtol)
        end = sol.y[:, -1]
        out.append(-0.5 * (end[:dims] ** 2).sum() - 0.5 * dims * math.log(2 * math.pi) + end[dims])
    return torch.tensor(out, dtype=torch.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--test-points", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-points", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(2)
    model, config = load_model(args.run_dir)
    distribution = toy_distribution(config["data"]["name"])
    points = distribution.sample(args.test_points, generator=torch.Generator().manual_seed(args.seed + 2))
    transform = DataTransform(config["data"]["center"], config["data"]["scale"])
    x = transform.to_model(points.double())
    truth = -distribution.log_prob(points)
    shift = points.shape[1] * math.log(transform.scale)
    root_n = math.sqrt(len(points))
    print(f"{args.run_dir}: {config['data']['name']}, {args.test_points} true points (seed {args.seed + 2}), "
          f"truth {float(truth.mean()):.4f} nats; {platform.processor() or platform.machine()}, 2 threads\n")
    print("| rtol = atol | batch | NLL (nats) | paired gap to the truth | mean network calls | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rtol, batch in ((1e-4, 256), (1e-5, 256), (1e-5, 2000), (1e-6, 2000)):
        start = time.perf_counter()
        result = ode_log_likelihood(model, x, rtol=rtol, atol=rtol, batch_size=batch, seed=args.seed)
        seconds = time.perf_counter() - start
        nll = -result.log_density - shift
        gap = nll - truth
        print(f"| {rtol:g} | {batch} | {float(nll.mean()):.4f} +- {float(nll.std() / root_n):.4f} | "
              f"{float(gap.mean()):.4f} +- {float(gap.std() / root_n):.4f} | {result.mean_network_calls:.0f} | "
              f"{seconds:.1f} |")
    n = args.reference_points
    ours = ode_log_likelihood(model, x[:n], batch_size=n).log_density
    reference = scipy_log_density(model, x[:n], 1e-9)
    print(f"\nfirst {n} points: dopri5 (rtol = atol = 1e-5, batch {n}) minus scipy DOP853 (rtol = atol = 1e-9): "
          f"mean {float((ours - reference).mean()):.2e}, max |.| {float((ours - reference).abs().max()):.2e} nats")


if __name__ == "__main__":
    main()
