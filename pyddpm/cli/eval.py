"""`pyddpm-eval RUN_DIR`: the metrics of a trained run, printed as a table and written to RUN_DIR/eval.json.

Toy runs: the toy metrics (``pyddpm.evaluate.toy.toy_metrics``) of ``--num`` samples and the negative
log-likelihood in nats of ``--test-points`` fresh true points. Image runs: the variational bound in bits/dim
(+- standard error) on the test split (``likelihood``) and the sample quality of ``--num`` samples in the
classifier's feature space (``frechet``), each beside its real-data floor: the same metric for as many training
images as samples, against the test split. ``--likelihood ode`` (or ``both``) computes the DDPM's exact
log-likelihood under its probability-flow ODE (``ode_likelihood``): on toy data in nats on the same true points,
on images in bits/dim of the same dequantised pixels as the flow's. Runs of the baselines (``pyddpm.baselines``) report the flow's exact
likelihood or the VAE's IWAE bounds (K = 1 and ``--iwae-k``) in place of the DDPM's bound, and the same sample
metrics.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..baselines.scoring import image_bits_per_dim, toy_negative_log_likelihood
from ..data import DataError, DataTransform, is_toy, load_images, toy_distribution
from ..diffusion import DDPM
from ..evaluate.classifier import (ClassifierError, checksum_path, classify, default_classifier_path, load_classifier,
                                   pixels_to_unit)
from ..evaluate.frechet import gaussian_statistics, quality_metrics
from ..evaluate.likelihood import bits_per_dim, dequantize_once, pixels_to_model, variational_bound
from ..evaluate.ode_likelihood import SOLVER, ode_log_likelihood
from ..evaluate.plots import plot_toy_samples, save_image_grid
from ..evaluate.toy import toy_metrics
from ..accel import keep_freed_memory
from ..evaluate.report import sampler_label
from ..samplers import generate_samples, plan_for
from ..schedules import VARIANCES
from ..schema import MAX_SAMPLES, MAX_SEED, MAX_T
from ..store import CheckpointError, load_model, write_json
from .common import (add_sampler_flags, add_sampling_network_flags, check_float, check_int, check_output_file,
                     pick_device, sampler_options, sampling_network_options)

EVAL_FILE = "eval.json"
GRID_IMAGES = 100
LIKELIHOODS = ("bound", "ode", "both")
ODE_FLAGS = ("rtol", "atol", "probes")  # flags of --likelihood ode; their defaults are set in main


def samples_to_pixels(samples: torch.Tensor) -> torch.Tensor:
    """Data-space samples in [0, 1] -> uint8 pixels floor(255 x), the inverse of the dequantisation (k + u) / 255."""
    return (samples * 255).floor().clamp(0, 255).to(torch.uint8)


def model_entry(config: dict) -> dict:
    """What a run is, for the record: its baseline entry, or the DDPM's network and diffusion."""
    if "model" in config:
        return {"model": config["model"]}
    return {"network": config["network"], "diffusion": config["diffusion"]}


def draw_samples(model, config: dict, args) -> tuple[torch.Tensor, dict]:
    """``args.num`` samples in data space and how they were drawn (sampler, variance, seed, seconds)."""
    start = time.perf_counter()
    sampler = sampler_options(args, model, variance_is_the_samplers=False)
    plan = plan_for(model, **sampler) if isinstance(model, DDPM) else None
    samples = generate_samples(model, config["data"], args.num, seed=args.seed, batch_size=args.batch_size,
                               progress=True, **sampler, **sampling_network_options(args, args.device))
    seconds = time.perf_counter() - start
    if args.save_samples:
        np.save(args.save_samples, samples.numpy())
    variance = args.variance or model.variance if isinstance(model, DDPM) else None
    return samples, {"num_samples": args.num, "sampler": sampler_label(model, plan),
                     "nfe": plan.nfe if plan else 1, "variance": variance, "seed": args.seed, "precision": args.precision,
                     "fast_network": not args.eager,
                     "sampling_seconds": round(seconds, 2), "seconds_per_sample": seconds / args.num}


def evaluate_toy(model, config: dict, args, grid_path: Path) -> dict:
    """Samples of a toy run and their toy metrics (with the energy distance's two-true-samples floor)."""
    samples, info = draw_samples(model, config, args)
    distribution = toy_distribution(config["data"]["name"])
    plot_toy_samples(distribution, samples, grid_path, title=info["sampler"])
    results = {"samples": {**info, **toy_metrics(distribution, samples, seed=args.seed + 1), "picture": str(grid_path)}}
    if not args.no_bound and args.likelihood != "ode":
        results["likelihood"] = toy_likelihood(model, config, distribution, args)
    if not args.no_bound and args.likelihood != "bound":
        results["ode"] = toy_ode_likelihood(model, config, distribution, args)
    return results


def test_points(distribution, args) -> torch.Tensor:
    """The ``args.test_points`` fresh true points (seed ``args.seed + 2``) every model's toy NLL is measured on."""
    return distribution.sample(args.test_points, generator=torch.Generator().manual_seed(args.seed + 2))


def ode_settings(result, args, seconds: float) -> dict:
    """How an ODE likelihood was computed: solver, tolerances, divergence and mean network calls per example."""
    divergence = "exact" if result.probes is None else f"Hutchinson, {result.probes} Rademacher probe(s) per example"
    return {"solver": f"{SOLVER} (torchdiffeq)", "rtol": result.rtol, "atol": result.atol,
            "divergence": divergence, "probes": result.probes, "mean_network_calls": result.mean_network_calls,
            "start": "s0 = 1/T (step 1)", "seed": args.seed, "seconds": round(seconds, 2),
            "escape_factor": result.escape_factor}


def toy_ode_likelihood(model, config: dict, distribution, args) -> dict:
    """The DDPM's probability-flow ODE NLL in nats of data space on the toy NLL's true points, beside the truth's
    and paired with it point by point (the gap's standard error is that of the per-point differences)."""
    points = test_points(distribution, args)
    data = config["data"]
    transform = DataTransform(data["center"], data["scale"])
    start = time.perf_counter()
    result = ode_log_likelihood(model, transform.to_model(points.double()), rtol=args.rtol, atol=args.atol,
                                probes=args.probes, batch_size=args.batch_size, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    finite = ~result.escaped
    nll = (-result.log_density - points.shape[1] * math.log(transform.scale))[finite]  # model -> data space
    gap = nll + distribution.log_prob(points)[finite]
    root_n = math.sqrt(len(nll))
    return {"ode_nll_nats": float(nll.mean()), "ode_nll_se": float(nll.std() / root_n),
            "true_nats": float(-distribution.log_prob(points).mean()), "paired_gap_nats": float(gap.mean()),
            "paired_gap_se": float(gap.std() / root_n), "test_points": len(points),
            "points_escaped": int(result.escaped.sum()), **ode_settings(result, args, seconds)}


def toy_likelihood(model, config: dict, distribution, args) -> dict:
    """-log p(x) in nats of data space of ``args.test_points`` fresh true points (``test_points``): the DDPM's
    bound with a continuous Gaussian decoder, the flow's exact value, the VAE's IWAE bounds; beside the truth's."""
    points = test_points(distribution, args)
    truth = float(-distribution.log_prob(points).mean())
    if not isinstance(model, DDPM):
        record = toy_negative_log_likelihood(model, points, config["data"], K=args.iwae_k, seed=args.seed,
                                             batch_size=len(points))
        return {**record, "true_nats": truth}
    start = time.perf_counter()
    data = config["data"]
    transform = DataTransform(data["center"], data["scale"])
    bound = variational_bound(model, transform.to_model(points.double()), t_samples=args.t_samples,
                              batch_size=len(points), variance=args.variance, seed=args.seed, decoder="gaussian")
    dims = points.shape[1]
    nats = bound.per_image * dims * math.log(2) - dims * math.log(transform.scale)  # bits/dim -> data-space nats
    estimator = "variational bound, Gaussian decoder" + (f", {args.t_samples} sampled t" if args.t_samples else "")
    mean, error = float(nats.mean()), float(nats.std() / math.sqrt(len(nats)))
    return {"nats": mean, "standard_error": error,
            "estimates": [{"estimator": estimator, "K": None, "nats": mean, "standard_error": error}],
            "test_points": len(points), "seed": args.seed, "seconds": round(time.perf_counter() - start, 2),
            "true_nats": truth}


def evaluate_images(model, config: dict, args, grid_path: Path) -> dict:
    """Bits/dim on the test split and sample quality beside the real-data floor for an image run."""
    data = config["data"]
    name = data["name"]
    if DataTransform(data["center"], data["scale"]) != DataTransform(0.5, 2.0):
        raise ValueError(f"the bound needs images mapped to [-1, 1] (center 0.5, scale 2); this run used "
                         f"center {data['center']}, scale {data['scale']}")
    data_dir = args.data_dir or config.get("train", {}).get("data_dir")
    classifier = None
    if not args.no_samples:  # fail before the long work if the classifier is missing or tampered with
        classifier_path = Path(args.classifier) if args.classifier else default_classifier_path(name)
        classifier, classifier_info = load_classifier(classifier_path, args.device)
    test_pixels, _ = load_images(name, "test", data_dir)
    results: dict = {}
    n = min(args.test_images or len(test_pixels), len(test_pixels))
    if not args.no_bound and not isinstance(model, DDPM):
        results["likelihood"] = image_bits_per_dim(model, test_pixels[:n], K=args.iwae_k, seed=args.seed,
                                                   batch_size=args.batch_size)
    if not args.no_bound and isinstance(model, DDPM) and args.likelihood != "bound":
        results["ode"] = image_ode_likelihood(model, test_pixels[:n].reshape(n, *data["shape"]), args)
    if not args.no_bound and isinstance(model, DDPM) and args.likelihood != "ode":
        x0 = pixels_to_model(test_pixels[:n].reshape(n, *data["shape"]))
        start = time.perf_counter()
        bound = variational_bound(model, x0, t_samples=args.t_samples, batch_size=args.batch_size,
                                  variance=args.variance, seed=args.seed, progress=True)
        results["bound"] = {
            "bits_per_dim": bound.bits_per_dim, "standard_error": bound.standard_error,
            "prior_L_T": float(bound.prior.mean()), "diffusion_sum_L_t": float(bound.diffusion.mean()),
            "decoder_L_0": float(bound.decoder.mean()), "test_images": n,
            "t_samples": args.t_samples, "variance": args.variance or model.variance, "seed": args.seed,
            "seconds": round(time.perf_counter() - start, 2),
            "convention": "pixels k at x0 = 2k/255 - 1, bins of width 2/255 (outer bins to +-inf)",
            "per_t": bound.per_t}
    if classifier is not None:
        samples, info = draw_samples(model, config, args)
        pixels = samples_to_pixels(samples)
        save_image_grid(pixels[:GRID_IMAGES].reshape(-1, *data["image_shape"]).float() / 255, grid_path)
        test_features, _ = classify(classifier, pixels_to_unit(test_pixels))
        reference = gaussian_statistics(test_features)
        train_pixels, _ = load_images(name, "train", data_dir)
        generator = torch.Generator().manual_seed(args.seed)
        floor_pixels = train_pixels[torch.randperm(len(train_pixels), generator=generator)[:args.num]]
        model_metrics = quality_metrics(*classify(classifier, pixels_to_unit(pixels)), reference)
        floor_metrics = quality_metrics(*classify(classifier, pixels_to_unit(floor_pixels)), reference)
        results["samples"] = {**info, **model_metrics, "picture": str(grid_path),
                              "floor": {"num_images": len(floor_pixels), **floor_metrics},
                              "reference": f"{len(test_pixels)} test images",
                              "classifier": {"path": str(classifier_path), "test_accuracy":
                                             classifier_info["test_accuracy"],
                                             "sha256": checksum_path(classifier_path).read_text().split()[0]}}
    return results


def image_ode_likelihood(model, pixels: torch.Tensor, args) -> dict:
    """The DDPM's probability-flow ODE bits/dim of uint8 test images, dequantised once with seed ``args.seed`` as
    the flow's exact bits/dim (``baselines.scoring.image_bits_per_dim``): the same points, the same units."""
    dims = pixels[0].numel()
    start = time.perf_counter()
    result = ode_log_likelihood(model, dequantize_once(pixels, args.seed), rtol=args.rtol, atol=args.atol,
                                probes=args.probes, batch_size=args.batch_size, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    bpd = bits_per_dim(result.log_density, dims).masked_fill(result.escaped, math.inf)  # escaped: no finite value
    kept = ~result.escaped
    n, finite = len(bpd), bpd[kept]
    record = {"ode_bits_per_dim": float(finite.mean()),
              "ode_bits_per_dim_se": float(finite.std() / math.sqrt(len(finite))),
              "ode_bits_per_dim_median": float(bpd.median()), "ode_bits_per_dim_max": float(finite.max()),
              "images_escaped": int(result.escaped.sum()), "test_images": n,
              **ode_settings(result, args, seconds),
              "convention": "pixels dequantised once, x = 2(k + u)/255 - 1; bits/dim = (-log p(x)/D + log(255/2)) / "
                            "log 2, as the flow's exact bits/dim"}
    if result.probe_variance is not None:  # the probes' share of the standard error
        variance = result.probe_variance[kept].sum()
        record["probe_se"] = float(variance.sqrt() / (len(finite) * dims * math.log(2)))
    return record


def ode_row(ode: dict) -> str:
    """The ODE likelihood's line of the table."""
    how = (f"probability-flow ODE, {ode['solver'].split()[0]} rtol {ode['rtol']:g} atol {ode['atol']:g}, "
           f"{ode['divergence'].split(',')[0]} divergence, {ode['mean_network_calls']:.0f} network calls")
    if "test_images" in ode:
        n, escaped = ode["test_images"], ode["images_escaped"]
        return (f"| bits/dim, {how} ({n - escaped} of {n} test images; mean over those that did not escape) | "
                f"{ode['ode_bits_per_dim']:.4f} ± {ode['ode_bits_per_dim_se']:.4f} | |\n"
                f"| the same, median over all {n} (escaped as +inf); largest finite value | "
                f"{ode['ode_bits_per_dim_median']:.4f}; {ode['ode_bits_per_dim_max']:.4g} | |\n"
                f"| images escaped: ODE trajectory stopped beyond {escape_bound(ode)}, no value | {escaped} | |")
    rows = (f"| -log p(x) in nats, {how} ({ode['test_points']} test points) | {ode['ode_nll_nats']:.4f} ± "
            f"{ode['ode_nll_se']:.4f} | {ode['true_nats']:.4f} (truth) |\n"
            f"| ODE NLL minus the truth's, paired point by point | {ode['paired_gap_nats']:.4f} ± "
            f"{ode['paired_gap_se']:.4f} | 0 |")
    if ode["points_escaped"]:
        rows += f"\n| points escaped beyond {escape_bound(ode)} (left out above) | {ode['points_escaped']} | |"
    return rows


def escape_bound(ode: dict) -> str:
    """Where the ODE stopped an example as escaped (``ode_log_likelihood``'s escape_factor)."""
    return f"|x(s)| = {ode['escape_factor']:g} max(|x(s0)|, sqrt(D))"


def format_table(title: str, results: dict) -> str:
    """The results as a Markdown table: metric | model | real-data floor."""
    rows = [f"{title}", "", "| metric | model | real data (train vs test) |", "|---|---:|---:|"]
    like = results.get("likelihood")
    for e in like["estimates"] if like else []:
        if "test_images" in like:
            rows.append(f"| bits/dim, {e['estimator']} ({like['test_images']} test images) | {e['bits_per_dim']:.4f} "
                        f"± {e['standard_error']:.4f} | |")
        else:
            rows.append(f"| -log p(x) in nats, {e['estimator']} ({like['test_points']} test points) | "
                        f"{e['nats']:.4f} ± {e['standard_error']:.4f} | {like['true_nats']:.4f} (truth) |")
    if results.get("ode"):
        rows.append(ode_row(results["ode"]))
    b = results.get("bound")
    if b:
        how = "all T terms" if b["t_samples"] is None else f"{b['t_samples']} sampled t per image"
        rows.append(f"| bits/dim ({b['test_images']} test images, {how}) | {b['bits_per_dim']:.4f} ± "
                    f"{b['standard_error']:.4f} | |")
        rows.append(f"| L_T / sum L_(t-1) / L_0 (bits/dim) | {b['prior_L_T']:.2e} / {b['diffusion_sum_L_t']:.4f} / "
                    f"{b['decoder_L_0']:.4f} | |")
    s = results.get("samples")
    if s:
        head = f"{s['num_samples']} samples, {s['sampler']}" + (f", sigma^2 = {s['variance']}" if s["variance"] else "")
        rows.append(f"| sampling time ({head}) | {s['sampling_seconds']:.1f} s "
                    f"({s['seconds_per_sample'] * 1000:.1f} ms/sample) | |")
        floor = s.get("floor")
        if floor:
            hist = lambda h: " ".join(f"{v:.2f}" for v in h)  # noqa: E731
            rows += [f"| Frechet distance (vs {s['reference']}) | {s['frechet_distance']:.3f} | "
                     f"{floor['frechet_distance']:.3f} |",
                     f"| label histogram 0-9 | {hist(s['label_histogram'])} | {hist(floor['label_histogram'])} |",
                     f"| label TV distance from uniform | {s['label_tv_from_uniform']:.3f} | "
                     f"{floor['label_tv_from_uniform']:.3f} |",
                     f"| mean classifier confidence | {s['mean_confidence']:.3f} | {floor['mean_confidence']:.3f} |"]
        else:  # toy
            rows.append(f"| energy distance | {s['energy_distance']:.2e} | {s['energy_distance_floor']:.2e} |")
            rows.append(f"| mean true log-density | {s['mean_log_prob']:.3f} | {s['true_mean_log_prob']:.3f} |")
            if "support_fraction" in s:
                rows.append(f"| support fraction | {s['support_fraction']:.2%} | 100% |")
                rows.append(f"| mass per square | {' '.join(f'{m:.3f}' for m in s['square_mass'])} | "
                            f"{' '.join('0.200' for _ in s['square_mass'])} |")
            if "mixture_weights" in s:
                rows.append(f"| mixture weights | {' / '.join(f'{w:.3f}' for w in s['mixture_weights'])} | "
                            "0.200 / 0.800 |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n\n")[0].split(": ", 1)[1]
    p = argparse.ArgumentParser(prog="pyddpm-eval", description=summary[0].upper() + summary[1:])
    p.add_argument("run_dir", help="run directory written by pyddpm-train")
    p.add_argument("--num", type=int, default=None,
                   help="samples to draw (default 5000 for toy data, 1000 for images)")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default="bound",
                   help="DDPM runs: bound: Ho et al.'s variational bound; ode: the exact log-likelihood under the "
                        "probability-flow ODE (Song et al. 2021), integrated by dopri5 (toy data: nats on the "
                        "--test-points; images: bits/dim of the --test-images dequantised as the flow's); both: "
                        "the two side by side (default bound)")
    p.add_argument("--rtol", type=float, default=None,
                   help="--likelihood ode: the solver's relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=None,
                   help="--likelihood ode: the solver's absolute tolerance (default 1e-5)")
    p.add_argument("--probes", type=int, default=None, metavar="K",
                   help="--likelihood ode: Hutchinson's divergence estimate with K Rademacher probes per example "
                        "(default: 1 on images; exact divergence on toy data unless given)")
    p.add_argument("--t-samples", type=int, default=None, metavar="K",
                   help="images: estimate sum_{t>=2} L_{t-1} from K uniformly drawn t per image (unbiased; L_T and "
                        "L_0 exact) instead of computing all T terms")
    p.add_argument("--test-images", type=int, default=None,
                   help="images: evaluate the bound on the first N test images (default: all)")
    p.add_argument("--test-points", type=int, default=2000,
                   help="toy data: fresh true points for the negative log-likelihood (default 2000)")
    p.add_argument("--iwae-k", type=int, default=100, metavar="K",
                   help="VAE runs: the larger K of the IWAE bound, reported beside K = 1 (the ELBO) (default 100)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per network call, bound and sampling (default 256)")
    add_sampler_flags(p, variance=False)
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="sigma_t^2 of p_theta for the bound and the sampler (default: the run's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the samples, the bound's noise and the floor's images (default 0)")
    p.add_argument("--classifier", default=None,
                   help="images: the classifier file (default ~/.cache/pyddpm/DATA-classifier.safetensors, "
                        "trained once by `pyddpm-classifier`)")
    p.add_argument("--data-dir", default=None, help="images: IDX directory (default: the run's)")
    p.add_argument("--no-bound", action="store_true",
                   help="skip the likelihood (images: the bound or a baseline's bits/dim; toy data: the test NLL)")
    p.add_argument("--no-samples", action="store_true", help="images: skip sampling and sample quality")
    p.add_argument("--save-samples", default=None, metavar="FILE.npy",
                   help="also write the samples the metrics were computed on (data space) to this .npy file")
    add_sampling_network_flags(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--out", default=None,
                   help=f"JSON file to write (default RUN_DIR/{EVAL_FILE}); the samples' picture goes beside "
                        "it with the suffix .png")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for flag, hi in (("num", MAX_SAMPLES), ("t_samples", MAX_T), ("test_images", None), ("steps", MAX_T),
                         ("batch_size", None), ("test_points", MAX_SAMPLES), ("iwae_k", None)):
            check_int(f"--{flag.replace('_', '-')}", getattr(args, flag), 1, hi)
        check_int("--seed", args.seed, 0, MAX_SEED)
        check_int("--probes", args.probes, 1)
        for flag in ("rtol", "atol"):
            check_float(f"--{flag}", getattr(args, flag), 0, math.inf, lo_open=True)
        ode_only = [flag for flag in ODE_FLAGS if getattr(args, flag) is not None]
        if ode_only and args.likelihood == "bound":
            raise ValueError(f"--{ode_only[0]} applies to --likelihood ode or both")
        args.rtol, args.atol = args.rtol or 1e-5, args.atol or 1e-5
        args.device = pick_device(args.device)
        sampling_network_options(args, args.device)
        if args.no_bound and args.no_samples:
            raise ValueError("nothing to evaluate: --no-bound and --no-samples together leave no metric")
        out = check_output_file(args.out or Path(args.run_dir) / EVAL_FILE, "--out")
        grid_path = check_output_file(out.with_suffix(".png"), "--out (its picture)")
        if args.save_samples:
            check_output_file(args.save_samples, "--save-samples", (".npy",))
        keep_freed_memory()
        model, config = load_model(args.run_dir, args.device)
        ddpm_only = [flag for flag in ("t_samples", "steps", "variance", "sampler", "spacing", "order", "eta")
                     if getattr(args, flag) is not None]
        ddpm_only += ["likelihood"] if args.likelihood != "bound" else []
        if ddpm_only and not isinstance(model, DDPM):
            raise ValueError(f"--{ddpm_only[0].replace('_', '-')} applies to DDPM runs; {args.run_dir} is a "
                             f"{config['model']['name']} run")
        sampler_options(args, model, variance_is_the_samplers=False)  # every sampler check, before any work
        toy = is_toy(config["data"]["name"])
        if not toy and args.probes is None:
            args.probes = 1
        if args.num is None:
            args.num = 5000 if toy else 1000
        for path in (out, Path(args.save_samples or out)):
            path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with torch.no_grad():
            results = (evaluate_toy if toy else evaluate_images)(model, config, args, grid_path)
        seconds = time.perf_counter() - start
    except (CheckpointError, ClassifierError, DataError, ValueError, RuntimeError) as err:
        print(f"pyddpm-eval: error: {err}", file=sys.stderr)
        return 2
    what = (f"{config['network']['name']}, T = {config['diffusion']['T']}" if isinstance(model, DDPM)
            else config["model"]["name"])
    title = f"pyddpm-eval {args.run_dir}: {config['data']['name']}, {what} on {args.device}"
    weights = model.network if isinstance(model, DDPM) else model
    record = {"run_dir": str(args.run_dir), "data": config["data"]["name"], **model_entry(config),
              "parameters": sum(p.numel() for p in weights.parameters()), "device": str(args.device),
              "eval_seconds": round(seconds, 1), **results}
    write_json(out, record)
    print(format_table(title, results))
    print(f"wrote {out}" + (f" and {grid_path}" if "samples" in results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
