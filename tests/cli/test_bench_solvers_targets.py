"""benchmarks/bench_solvers.py's verdicts on issue 32's targets: each one met or not met from the measured figures."""
import pytest

from helpers.benchmarks import benchmark_module

T = 1000


def bench():
    return benchmark_module("bench_solvers")


def toy_cell(support, worst):
    return {"support": support, "worst": worst, "se": 0.0006}


def toy_results():
    results = {("Algorithm 2", T): toy_cell(0.9934, 0.0065)}
    for nfe in (5, 8, 10, 20, 50):
        results["pyddpm unipc", nfe] = toy_cell(0.9940, 0.0093) if nfe >= 10 else toy_cell(0.9884, 0.0649)
        results["pyddpm ddim", nfe] = toy_cell(0.95, 0.2)
        results["diffusers UniPC (bh2)", nfe] = toy_cell(0.9827, 0.0658)
    return results


def test_toy_targets_name_the_passing_sampler_and_the_unmet_one():
    lines = bench().toy_targets(toy_results(), T)
    nfe10, nfe5, diffusers = lines
    assert "NFE 10" in nfe10 and "pyddpm unipc: 99.40% (0.0093)" in nfe10 and nfe10.endswith("| met |")
    assert "NFE 5" in nfe5 and "pyddpm unipc: 98.84% (0.0649)" in nfe5 and "**not met**" in nfe5
    assert "none is" in diffusers and diffusers.endswith("| met |")


def test_toy_targets_report_a_diffusers_row_better_on_both_figures():
    results = toy_results()
    results["diffusers UniPC (bh2)", 8] = toy_cell(0.9950, 0.0050)  # beats every pyddpm row at NFE 8
    results["diffusers UniPC (bh2)", 50] = toy_cell(0.9990, 0.0010)  # NFE 50 is outside the target
    line = bench().toy_targets(results, T)[-1]
    assert "diffusers UniPC (bh2) at NFE 8" in line and "NFE 50" not in line and "**not met**" in line


def test_toy_target_at_nfe_10_fails_when_one_figure_misses():
    results = toy_results()
    results["pyddpm unipc", 10] = toy_cell(0.9940, 0.0110)  # support fine, worst square 0.011 > 0.01
    assert "**not met**" in bench().toy_targets(results, T)[0]


def mnist_results(ours, diffusers):
    return {("Algorithm 2", T): {"fd": 123.2, "fd_sd": 5.8},
            ("pyddpm sde-dpm++2m", 10): {"fd": ours, "fd_sd": 5.0},
            ("diffusers SDE-DPM-Solver++ 2M", 10): {"fd": diffusers, "fd_sd": 5.0}}


def test_mnist_target_needs_both_algorithm_2_and_diffusers():
    target = bench().mnist_targets
    assert target(mnist_results(128.0, 150.1), T)[0].endswith("| met |")  # within 123.2 + 5.8
    assert "**not met**" in target(mnist_results(130.0, 150.1), T)[0]  # above 129.0
    assert "**not met**" in target(mnist_results(128.0, 127.0), T)[0]  # worse than diffusers' best


def test_default_targets_compare_the_default_with_algorithm_2():
    b = bench()
    toy = {("Algorithm 2", T): toy_cell(0.9934, 0.0065),
           (f"pyddpm {b.DEFAULT_SAMPLER}", b.DEFAULT_STEPS): toy_cell(0.9925, 0.0048)}
    mnist = {("Algorithm 2", T): {"fd": 123.2, "fd_sd": 5.8},
             (f"pyddpm {b.DEFAULT_SAMPLER}", b.DEFAULT_STEPS): {"fd": 127.6, "fd_sd": 5.9}}
    toy_line, mnist_line = b.default_targets(toy, mnist, T)
    assert "**not met**" in toy_line  # 99.25% < 99.34% - 0.06
    assert mnist_line.endswith("| met |")


def test_cost_targets_hold_the_default_command_to_eager_at_every_nfe():
    lines = bench().cost_targets({"toy": 0.014, "MNIST": 0.06}, {5: (1.0, 6, 10), 10: (0.98, 3, 10)})
    assert lines[0].endswith("| met |") and "**not met**" in lines[1]
    assert lines[2].endswith("| met |")
    # slower by the median at NFE 20, in 9 of 10 pairs: measurably (p = 11/1024)
    assert "**not met**" in bench().cost_targets({}, {5: (0.99, 4, 10), 20: (1.03, 9, 10)})[0]
    # slower by the median, in 7 of 10 pairs: what two commands doing the same work give by chance (p = 0.17)
    assert bench().cost_targets({}, {5: (0.99, 4, 10), 20: (1.03, 7, 10)})[0].endswith("| met |")


def test_the_sign_test_is_the_binomial_tail():
    b = bench()
    assert b.sign_test(9, 10) == 11 / 1024 and b.sign_test(0, 10) == 1.0 and b.sign_test(10, 10) == 1 / 1024
    assert b.sign_test(7, 10) == pytest.approx(176 / 1024)
