"""FID: the Fréchet distance against closed forms (SPEC §5), float64 streaming statistics, the
sample-folder contract, and the CLI over two processes — all with a tiny deterministic extractor."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import free_port
import scipy.linalg
import torch

from evaluation.metrics import exit_on_user_error
from evaluation.metrics import fid as fid_module
from evaluation.metrics.fid import (
    FeatureStats,
    build_reference,
    calc_fid,
    compute_feature_stats,
    fid_from_files,
    frechet_distance,
    load_inception,
    load_stats,
    save_stats,
)
from evaluation.metrics.images import IncompleteSamplesError, Processes, open_image_collection
from evaluation.metrics.smoke import pooled_color_features as tiny_features  # uint8 images -> 12 features (2×2 grid means)
from evaluation.metrics.weights import MissingWeightsError

REPO = Path(__file__).resolve().parents[1]


def load_cli():
    """evaluation/fid.py as a module (the scripts are run by path, not imported as a package)."""
    spec = importlib.util.spec_from_file_location("fid_cli", REPO / "evaluation" / "fid.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def random_spd(dim: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def write_images(folder: Path, count: int, seed: int = 0, size=(16, 16)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i in range(count):
        array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        PIL.Image.fromarray(array).save(folder / f"{i:05d}.png")
        arrays.append(array)
    return arrays


def write_sample_folder(folder: Path, count: int, num_images: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """What sample.py writes: images, manifest.jsonl, sampling_options.json."""
    arrays = write_images(folder, count, seed)
    with open(folder / "manifest.jsonl", "w") as file:
        for i in range(count):
            file.write(json.dumps({"index": i, "prompt": f"prompt {i}", "seed": i, "file": f"{i:05d}.png"}) + "\n")
    options = {"family": "sd15", "base_model": "tiny", "method": "cfg", "cfg_scale": 5.0, "alpha": None,
               "steps": 2, "nfe": 4, "num_images": num_images or count, "prompts": "coco5k", "sharpener": None,
               "resolution": 16}
    (folder / "sampling_options.json").write_text(json.dumps(options))
    return arrays


def stats_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def features_of(arrays: list[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return tiny_features(batch).double().numpy()


# ---------------------------------------------------------------- Fréchet distance: closed forms


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(32), random_spd(32, rng)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    # Rank-deficient (fewer samples than dimensions), as with a small sample of 2048-d features.
    mu, sigma = stats_of(rng.standard_normal((10, 64)) * 3)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-3


def test_commuting_covariances_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.01, 5, 20), rng.uniform(0.01, 5, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_two_by_two_non_commuting_closed_form():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(2, rng), random_spd(2, rng)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    trace_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))  # Tr √M for 2×2 M with positive eigenvalues
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_symmetry_orthogonal_invariance_and_scaling():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    y = rng.standard_normal((300, 16)) * 1.5 + 0.3
    (mu1, s1), (mu2, s2) = stats_of(x), stats_of(y)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert value > 1
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(value, rel=1e-10)
    q = random_orthogonal(16, rng)
    assert frechet_distance(*stats_of(x @ q.T), *stats_of(y @ q.T)) == pytest.approx(value, rel=1e-9)
    assert frechet_distance(*stats_of(3 * x), *stats_of(3 * y)) == pytest.approx(9 * value, rel=1e-9)


def test_agrees_with_float64_sqrtm_on_random_statistics():
    rng = np.random.default_rng(4)
    s1, s2 = random_spd(48, rng), random_spd(48, rng)
    mu1, mu2 = rng.standard_normal(48), rng.standard_normal(48)
    sqrt_product = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrt_product)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_float32_sqrtm_pitfall_and_float64_accuracy():
    """FID is a small difference of large traces: sqrtm on float32 input loses it; our path does not."""
    rng = np.random.default_rng(0)
    dim = 64
    q = random_orthogonal(dim, rng)
    a = np.logspace(-4, 3, dim)  # ill-conditioned, like Inception feature covariances
    b = a * (1 + 0.01 * rng.standard_normal(dim)) ** 2  # a nearby distribution: FID ≈ 1
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    mu = np.zeros(dim)
    exact = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # the two covariances commute

    ours_error = abs(frechet_distance(mu, s1, mu, s2) - exact) / exact
    assert ours_error < 1e-5

    s1_32, s2_32 = s1.astype(np.float32), s2.astype(np.float32)
    sqrt_product = scipy.linalg.sqrtm(s1_32 @ s2_32).real
    float32_value = float(np.trace(s1_32) + np.trace(s2_32) - 2 * np.trace(sqrt_product))
    float32_error = abs(float32_value - exact) / exact
    assert float32_error > 0.01 and float32_error > 100 * ours_error


def test_mismatched_dimensions_are_an_error():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- statistics


def test_streaming_statistics_match_numpy():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((257, 12)) * rng.uniform(0.1, 10, 12) + 100  # large mean: cancellation check
    stats = FeatureStats(12)
    for chunk in np.array_split(data, 7):
        stats.update(torch.from_numpy(chunk).float())
    as_float32 = data.astype(np.float32).astype(np.float64)  # the extractor hands over float32
    mu, sigma = stats.mean_cov()
    assert stats.count == 257 and mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, as_float32.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(as_float32, rowvar=False), rtol=1e-8, atol=1e-9)


def test_shard_statistics_merge_to_the_whole():
    """What the processes do: each takes its shard, the sums are reduced, the result is the whole."""
    rng = np.random.default_rng(6)
    data = rng.standard_normal((101, 8))
    rows = list(range(len(data)))
    merged = None
    for rank in range(3):
        shard = Processes(rank=rank, world_size=3).shard(rows)
        part = FeatureStats(8)
        part.update(torch.from_numpy(data[shard]))
        merged = part if merged is None else merged.merge(part)
    assert sorted(sum((Processes(rank=r, world_size=3).shard(rows) for r in range(3)), [])) == rows
    mu, sigma = merged.mean_cov()
    np.testing.assert_allclose(mu, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(data, rowvar=False), rtol=1e-10)


def test_too_few_images():
    stats = FeatureStats(4)
    stats.update(torch.ones(1, 4))
    with pytest.raises(ValueError, match="at least 2 images"):
        stats.mean_cov()


def test_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(7)
    mu, sigma = rng.standard_normal(5), random_spd(5, rng)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    with np.load(tmp_path / "ref.npz") as data:  # EDM format: exactly mu and sigma, float64
        assert sorted(data) == ["mu", "sigma"] and data["sigma"].dtype == np.float64
    loaded_mu, loaded_sigma = load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    save_stats(tmp_path / "other.npz", mu + 1, sigma)
    assert fid_from_files(tmp_path / "ref.npz", tmp_path / "other.npz") == pytest.approx(5.0, rel=1e-9)
    with pytest.raises(FileNotFoundError, match="evaluation/fid.py ref"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")


# ---------------------------------------------------------------- folders, zips, sample folders


def test_calc_fid_on_a_sample_folder(tmp_path):
    arrays = write_sample_folder(tmp_path / "samples", 10)
    rng = np.random.default_rng(8)
    ref_mu, ref_sigma = rng.uniform(100, 150, 12), random_spd(12, rng) * 50
    save_stats(tmp_path / "ref.npz", ref_mu, ref_sigma)
    result = calc_fid(tmp_path / "samples", tmp_path / "ref.npz", feature_extractor=tiny_features, batch_size=3)
    expected = frechet_distance(*stats_of(features_of(arrays)), ref_mu, ref_sigma)
    assert result.metric == "fid" and result.count == 10
    assert result.value == pytest.approx(expected, rel=1e-6)  # 10 images, 12 features: rank-deficient
    assert result.sampling_options["method"] == "cfg" and result.options["num_processes"] == 1


def test_reference_from_folder_zip_and_center_crop(tmp_path):
    arrays = write_images(tmp_path / "data", 6, size=(20, 12))
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        for file in sorted((tmp_path / "data").iterdir()):
            archive.write(file, file.name)
    assert build_reference(tmp_path / "data", tmp_path / "a.npz", feature_extractor=tiny_features) == 6
    build_reference(tmp_path / "data.zip", tmp_path / "b.npz", feature_extractor=tiny_features, num_workers=1)
    np.testing.assert_allclose(load_stats(tmp_path / "a.npz")[0], stats_of(features_of(arrays))[0], rtol=1e-12)
    assert fid_from_files(tmp_path / "a.npz", tmp_path / "b.npz") == pytest.approx(0, abs=1e-3)  # rank-deficient

    seen_shapes = set()

    def recording_extractor(images):
        seen_shapes.add(tuple(images.shape[2:]))
        return tiny_features(images)

    build_reference(tmp_path / "data", tmp_path / "c.npz", center_crop_resize=8, feature_extractor=recording_extractor)
    assert seen_shapes == {(8, 8)}


def test_mixed_image_sizes_without_resizing(tmp_path):
    write_images(tmp_path / "mixed", 3, seed=1, size=(16, 16))
    for i, size in enumerate([(24, 16), (16, 24)]):
        PIL.Image.new("RGB", size, (i * 50, 20, 30)).save(tmp_path / "mixed" / f"extra{i}.jpg")
    stats, _ = compute_feature_stats(tmp_path / "mixed", tiny_features, batch_size=5)
    assert stats.count == 5


def test_incomplete_sample_folder_is_refused(tmp_path):
    write_sample_folder(tmp_path / "samples", 6, num_images=8)
    save_stats(tmp_path / "ref.npz", np.zeros(12), np.eye(12))
    with pytest.raises(IncompleteSamplesError, match="lists 6 of the 8 images.*--allow_incomplete"):
        calc_fid(tmp_path / "samples", tmp_path / "ref.npz", feature_extractor=tiny_features)
    result = calc_fid(tmp_path / "samples", tmp_path / "ref.npz", feature_extractor=tiny_features, allow_incomplete=True)
    assert result.count == 6

    os.remove(tmp_path / "samples" / "00003.png")
    with pytest.raises(IncompleteSamplesError, match="1 image files listed in manifest.jsonl are missing"):
        open_image_collection(tmp_path / "samples")
    # Entries beyond num_images (a longer earlier run) are not scored.
    write_sample_folder(tmp_path / "longer", 6, num_images=4)
    assert [r.index for r in open_image_collection(tmp_path / "longer").records] == [0, 1, 2, 3]


def test_dimension_mismatch_and_missing_reference(tmp_path):
    write_sample_folder(tmp_path / "samples", 4)
    save_stats(tmp_path / "ref5.npz", np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="12-d features but .* has 5-d"):
        calc_fid(tmp_path / "samples", tmp_path / "ref5.npz", feature_extractor=tiny_features)
    with pytest.raises(FileNotFoundError, match="Reference statistics not found"):
        calc_fid(tmp_path / "samples", tmp_path / "nope.npz", feature_extractor=tiny_features)


def test_missing_inception_weights_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weights cache
    monkeypatch.delenv("DICE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        load_inception()
    message = str(error.value)
    assert fid_module.INCEPTION_WEIGHTS_URL in message
    assert "--inception_weights" in message and "DICE_INCEPTION_WEIGHTS" in message
    with pytest.raises(MissingWeightsError, match="not found: /no/such.pth"):
        load_inception("/no/such.pth")

    # The CLI ends with that one message, not a traceback.
    write_sample_folder(tmp_path / "samples", 3)
    save_stats(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))
    with pytest.raises(SystemExit) as exit, exit_on_user_error():
        load_cli().main(["calc", "--images", str(tmp_path / "samples"), "--ref", str(tmp_path / "ref.npz"),
                         "--results", str(tmp_path / "results.jsonl")])
    assert exit.value.code != 0 and capsys.readouterr().err == f"error: {message}\n"


def test_cli_dist(tmp_path, capsys):
    save_stats(tmp_path / "a.npz", np.zeros(3), np.eye(3))
    save_stats(tmp_path / "b.npz", np.full(3, 2.0), np.eye(3))
    load_cli().main(["dist", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    assert float(capsys.readouterr().out) == pytest.approx(12.0)


def test_inception_wrapper_with_random_weights(tmp_path, monkeypatch):
    """Our wrapper drives torch-fidelity's network as SPEC §5 says (weights here are random)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as patch:  # build the architecture once without any weights file
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(network.state_dict(), tmp_path / "inception.pth")
    monkeypatch.setenv("DICE_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    extractor = load_inception()
    extractor.network.INPUT_IMAGE_SIZE = 75  # 299 takes seconds per image on a CPU; the path is the same
    with torch.no_grad():
        features = extractor(torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8))
    assert features.shape == (2, 2048) and features.dtype == torch.float32


# ---------------------------------------------------------------- the CLI over two processes

LAUNCHER = """
import importlib.util, sys
from evaluation.metrics.smoke import pooled_color_features
spec = importlib.util.spec_from_file_location("fid_cli", sys.argv[1])
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)
cli.main(sys.argv[2:], feature_extractor=pooled_color_features)
"""


@pytest.mark.slow  # a two-process launch; the fast tier keeps the two-process training test
@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="no accelerate CLI")
def test_cli_calc_with_two_processes(tmp_path):
    arrays = write_sample_folder(tmp_path / "samples", 9)
    rng = np.random.default_rng(9)
    ref_mu, ref_sigma = rng.uniform(100, 150, 12), random_spd(12, rng) * 50
    save_stats(tmp_path / "ref.npz", ref_mu, ref_sigma)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", free_port(),
               "--mixed_precision", "no", "--dynamo_backend", "no", str(tmp_path / "launcher.py"),
               str(REPO / "evaluation" / "fid.py"), "calc", "--images", str(tmp_path / "samples"),
               "--ref", str(tmp_path / "ref.npz"), "--results", str(tmp_path / "results.jsonl"),
               "--num_workers", "0", "--batch_size", "2"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only the main process writes
    record = json.loads(lines[0])
    assert record["options"]["num_processes"] == 2 and record["count"] == 9
    expected = frechet_distance(*stats_of(features_of(arrays)), ref_mu, ref_sigma)
    assert record["value"] == pytest.approx(expected, rel=1e-6)
    assert set(record) == {"metric", "value", "count", "images", "sampling_options", "options", "time", "seconds"}
