"""The Frechet distance, the label histogram, and the classifier cache that loads only a file whose checksum matches."""
import hashlib
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from pyddpm.evaluate.classifier import (ClassifierError, ImageClassifier, checksum_path, classify, load_classifier,
                                        save_classifier)
from pyddpm.evaluate.frechet import frechet_distance, gaussian_statistics, label_histogram, quality_metrics


def random_features(n=3000, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + torch.randn(d, generator=g, dtype=torch.float64)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = random_features()
    stats = gaussian_statistics(x)
    scale = torch.trace(stats[1]).item()
    assert frechet_distance(*stats, *stats) < 1e-9 * scale
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    distances = [frechet_distance(*gaussian_statistics(x + s * noise), *stats) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    # adding independent noise of variance s^2 to every coordinate: d^2 -> sum_i (sqrt(l_i + s^2) - sqrt(l_i))^2
    # in the eigenbasis of the covariance, about d s^4 / (4 l) for small s; at s = 3 it is a large fraction of tr
    assert distances[0] > 0 and distances[-1] > 0.1 * scale


def test_frechet_distance_matches_closed_forms():
    # diagonal covariances: d^2 = ||m1 - m2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    expected = ((m1 - m2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected.item(), rel=1e-12)
    # full covariances: the usual sqrtm formula (scipy) as the reference
    s1 = gaussian_statistics(random_features(seed=2))[1]
    s2 = gaussian_statistics(random_features(seed=3))[1]
    reference = np.trace(s1.numpy() + s2.numpy() - 2 * scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real)
    assert frechet_distance(m1.new_zeros(12), s1, m1.new_zeros(12), s2) == pytest.approx(reference, rel=1e-8)
    # singular covariances (fewer samples than dimensions, as with dead ReLU features) stay finite and >= 0
    few = gaussian_statistics(random_features(n=5, seed=4))
    assert 0 <= frechet_distance(*few, *gaussian_statistics(random_features(seed=4))) < float("inf")


def test_label_histogram_and_quality_metrics():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    assert label_histogram(probs) == [0.5, 0.25, 0.25]
    feats = random_features(n=4, d=2)
    metrics = quality_metrics(feats, probs, gaussian_statistics(feats))
    assert metrics["frechet_distance"] < 1e-9
    assert metrics["mean_confidence"] == pytest.approx((0.9 + 0.7 + 0.6 + 0.8) / 4)
    assert metrics["label_tv_from_uniform"] == pytest.approx(0.5 * (1 / 6 + 1 / 12 + 1 / 12))


# ----- the classifier cache ----------------------------------------------------------------------------
@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier((4, 8), 16).eval()  # a tiny stand-in for the trained classifier
    path = tmp_path / "clf.safetensors"
    digest = save_classifier(model, path, {"data": "mnist", "test_accuracy": 0.5})
    return model, path, digest


def test_classifier_round_trip_and_checksum_file(saved):
    model, path, digest = saved
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checksum_path(path).read_text() == f"{digest}  clf.safetensors\n"  # `sha256sum -c` format
    loaded, info = load_classifier(path)
    assert info["test_accuracy"] == 0.5 and not loaded.training
    images = torch.rand(7, 784)
    for a, b in zip(classify(model, images), classify(loaded, images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tampered_classifier_is_refused(saved):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ClassifierError, match="checksum mismatch.*modified or corrupted"):
        load_classifier(path)


def test_classifier_without_a_matching_checksum_record_is_refused(saved):
    _, path, _ = saved
    checksum_path(path).write_text("0" * 64 + "  clf.safetensors\n")
    with pytest.raises(ClassifierError, match="checksum mismatch"):
        load_classifier(path)
    checksum_path(path).unlink()
    with pytest.raises(ClassifierError, match="no recorded checksum"):
        load_classifier(path)
    with pytest.raises(ClassifierError, match="no classifier at .*pyddpm-classifier"):
        load_classifier(path.with_name("missing.safetensors"))


class _Exploit:
    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_is_never_unpickled_even_with_a_matching_checksum(tmp_path):
    """A pickle that would create a file when unpickled, with a valid checksum: refused, and nothing runs."""
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "clf.safetensors"
    path.write_bytes(pickle.dumps(exploit))
    checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "  clf.safetensors\n")
    with pytest.raises(ClassifierError, match="not a pyddpm classifier"):
        load_classifier(path)
    assert not marker.exists()
