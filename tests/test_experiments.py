import pytest
import torch

from dice import experiments
from dice.checkpoint import SharpenerConfig, load_sharpener, resolve_sharpener_files, save_sharpener
from dice import Sharpener


def test_run_folders_are_numbered_after_the_highest(tmp_path):
    assert experiments.create_run_dir(tmp_path, "a b/c").name == "00000-a-b-c"
    (tmp_path / "00007-old").mkdir()
    (tmp_path / "notes").mkdir()
    assert experiments.create_run_dir(tmp_path, "next").name == "00008-next"
    assert experiments.resolve_run("7", tmp_path).name == "00007-old"
    assert experiments.resolve_run("00008", tmp_path).name == "00008-next"
    with pytest.raises(experiments.ExperimentNotFound, match="no experiment number 3.*00008-next"):
        experiments.resolve_run(3, tmp_path)


def _create_runs(root, desc, count=40):
    return [experiments.create_run_dir(root, desc).name for _ in range(count)]


def test_runs_started_at_once_never_share_a_number(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(3) as pool:
        names = sum(pool.starmap(_create_runs, [(tmp_path, f"desc{i}") for i in range(3)]), [])
    numbers = [name[:5] for name in names]
    assert len(set(numbers)) == len(numbers) == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no claim folder left behind


def test_an_ambiguous_number_is_refused_naming_both(tmp_path):
    (tmp_path / "00001-a").mkdir()
    (tmp_path / "00001-b").mkdir()
    with pytest.raises(experiments.ExperimentNotFound, match="ambiguous.*00001-a.*00001-b"):
        experiments.resolve_run("1", tmp_path)
    assert experiments.create_run_dir(tmp_path, "c").name == "00002-c"


def test_half_written_checkpoints_are_never_picked(tmp_path):
    run = tmp_path / "00000-run"
    torch.manual_seed(0)
    config = SharpenerConfig(family="sd15", base_model="m", dim=8, inner_dim=16, num_heads=2)
    for step in (10, 20):
        config.step = step
        save_sharpener(run / f"checkpoint-{step}", Sharpener(8, 16, 2), config)
    # What a crash during the save of step 30 leaves behind: a hidden temporary folder.
    (run / ".checkpoint-30.tmp").mkdir()
    (run / ".checkpoint-30.tmp" / "sharpener.safetensors").write_bytes(b"trunc")
    assert [p.name for p in experiments.list_checkpoints(run)] == ["checkpoint-10", "checkpoint-20"]
    weights, _ = resolve_sharpener_files("0", tmp_path)
    assert weights.parent.name == "checkpoint-20"
    sharpener, loaded = load_sharpener("0", tmp_path)
    assert loaded.step == 20 and (loaded.dim, loaded.inner_dim, loaded.num_heads) == (8, 16, 2)
    experiments.remove_incomplete_checkpoints(run)
    assert not (run / ".checkpoint-30.tmp").exists()
    assert [p.name for p in experiments.prune_checkpoints(run, 1)] == ["checkpoint-10"]


def test_load_by_checkpoint_folder_or_file(tmp_path):
    torch.manual_seed(0)
    original = Sharpener(8, 16, 2)
    folder = tmp_path / "checkpoint-3"
    save_sharpener(folder, original, SharpenerConfig(family="sd15", base_model="m", dim=8, inner_dim=16, num_heads=2, step=3))
    for spec in (folder, folder / "sharpener.safetensors"):
        loaded, _ = load_sharpener(spec)
        assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), loaded.state_dict().values()))
        assert not any(p.requires_grad for p in loaded.parameters())
    empty = tmp_path / "00001-empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no sharpener"):
        load_sharpener(empty)
