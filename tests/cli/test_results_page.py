"""benchmarks/write_results_page.py --splice: one regenerated section replaces its namesake in RESULTS.md, stamped,
and every other part of the page stays byte for byte."""
from helpers.benchmarks import benchmark_module


def results_page():
    return benchmark_module("write_results_page")


def test_splice_replaces_only_the_regenerated_section():
    old = ("# page\n\nheader\n\n## 1. One?\n\nold one\n\n## 4. Four?\n\nold four\n### sub\nold table\n\n"
           "## 5. Five?\n\nold five\n\n## Reproduce\n\nold command\n")
    new = "# page\n\nnew header\n\n## 4. Four, again?\n\nnew four\n### sub\nnew table\n\n## Reproduce\n\nnew command\n"
    out = results_page().splice(old, new, "*STAMP*")
    assert out == ("# page\n\nheader\n\n## 1. One?\n\nold one\n\n## 4. Four, again?\n\n*STAMP*\n\nnew four\n### sub\n"
                   "new table\n\n## 5. Five?\n\nold five\n\n## Reproduce\n\nold command\n")


def test_splice_keeps_a_page_without_the_section():
    old = "# page\n\n## 1. One?\n\nold one\n"
    assert results_page().splice(old, "## 4. Four?\n\nnew\n", "*STAMP*") == old


def test_ode_cell_gives_the_median_and_the_escaped_images_on_images_only():
    page = results_page()
    image = {"ode_bits_per_dim": 2.6665, "ode_bits_per_dim_se": 0.0152, "ode_bits_per_dim_median": 2.7156,
             "images_escaped": 28, "test_images": 500, "divergence": "Hutchinson, 1 Rademacher probe",
             "mean_network_calls": 454.1}
    assert page._ode_estimate(image) == ("2.667 +- 0.015 (probability-flow ODE, hutchinson divergence, 454 calls; the "
                                         "mean of the 472 of 500 images that did not escape, median 2.716 with the "
                                         "escaped ones as +inf)")
    assert page._ode_estimate(dict(image, images_escaped=0)).endswith("454 calls; median 2.716, no image escaped)")
    toy = {"ode_nll_nats": -0.5534, "ode_nll_se": 0.0051, "divergence": "exact, by autograd",
           "mean_network_calls": 715}
    assert page._ode_estimate(toy) == "-0.553 +- 0.005 (probability-flow ODE, exact divergence, 715 calls)"
