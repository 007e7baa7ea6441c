"""Training end to end through `accelerate launch`, as users run it, on the tiny SD1.5 pipeline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def _launch(args, processes=1, extra_launch=(), check=True):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no"]
    if processes > 1:
        # gloo DDP on CPU; `--cpu --num_processes N` would silently run one process
        launch += ["--multi_gpu", "--main_process_port", free_port()]
    launch += ["--num_processes", str(processes), *extra_launch]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(launch + [str(REPO / "train_sd15.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _base(model, data, out, steps, every):
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--output_dir", str(out),
            "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", str(steps),
            "--checkpointing_steps", str(every), "--dataloader_num_workers", "0", "--validation_prompts"]


def _weights(ckpt):
    return load_file(str(ckpt / "sharpener.safetensors"))


@pytest.mark.slow  # two accelerate launches (the fast tier keeps the two-process one below)
def test_paper_command_line(tiny_model, tiny_dataset, tmp_path):
    """The README's command, as written, with a tiny model: fp16, xformers requested, n_gpus."""
    out = tmp_path / "exps"
    args = ["--pretrained_model_name_or_path=" + str(tiny_model("sd15")), "--enable_xformers_memory_efficient_attention",
            "--gradient_accumulation_steps=1", "--max_train_steps=4", "--checkpointing_steps=2", "--n_gpus=1",
            "--guidance_scale=5", "--train_batch_size=2", "--learning_rate=2e-4", "--lr_scheduler=constant",
            "--lr_warmup_steps=0", "--train_data_dir=" + str(tiny_dataset), "--output_dir=" + str(out),
            "--resolution=32", "--dataloader_num_workers=0", "--checkpoints_total_limit=1",
            "--validation_prompts", "a red ball", "--validation_inference_steps=2"]
    proc = _launch(args, extra_launch=["--mixed_precision=fp16"])
    run = next(out.iterdir())
    assert run.name == "00000-sd15-sd15-paper"
    log = (run / "log.txt").read_text()
    assert "xformers requested but unusable" in log and "scaled_dot_product_attention" in log
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-4"]  # total limit 1
    assert "removed old checkpoint checkpoint-2" in log
    options = json.loads((run / "training_options.json").read_text())
    assert options["mixed_precision"] == "fp16" and options["n_gpus"] == 1 and options["guidance_scale"] == 5
    config = json.loads((run / "checkpoint-4" / "sharpener.json").read_text())
    assert config["family"] == "sd15" and config["dim"] == 32 and config["step"] == 4
    assert config["base_model"] == str(tiny_model("sd15"))
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3, 4] and all(s["loss"] > 0 and s["lr"] == 2e-4 for s in stats)
    # Losses are read back once per window (here: at each checkpoint); the window's last line has its throughput.
    assert ["images_per_second" in s for s in stats] == [False, True, False, True]
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert not list(run.glob(".checkpoint-*"))
    # A second run takes the next number.
    _launch(_base(tiny_model("sd15"), tiny_dataset, out, 1, 1))
    assert sorted(p.name[:5] for p in out.iterdir()) == ["00000", "00001"]


@pytest.mark.slow  # three launches; in-process resume is bit-identical in test_sdxl_pixart.py / test_methods.py
def test_resume_is_bit_identical(tiny_model, tiny_dataset, tmp_path):
    out = tmp_path / "exps"
    model = tiny_model("sd15")
    _launch(_base(model, tiny_dataset, out, 6, 3) + ["--desc", "straight"])
    _launch(_base(model, tiny_dataset, out, 3, 3) + ["--desc", "interrupted"])
    _launch(_base(model, tiny_dataset, out, 6, 3) + ["--resume_from_checkpoint", "latest", "--experiment", "1"])
    straight, resumed = out / "00000-straight", out / "00001-interrupted"
    assert not (out / "00002-interrupted").exists()  # resumed in the same folder
    assert "resumed from" in (resumed / "log.txt").read_text()
    a, b = _weights(straight / "checkpoint-6"), _weights(resumed / "checkpoint-6")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not all((a[k] == _weights(resumed / "checkpoint-3")[k]).all() for k in a)  # it did train on
    assert not (straight / "checkpoint-6" / "model.safetensors").exists()  # each weight once: no second copy without EMA
    steps = [json.loads(x)["step"] for x in (resumed / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def _logged_lr(run):
    return [json.loads(line)["lr"] for line in (run / "stats.jsonl").read_text().splitlines()]


def test_two_processes_stay_identical_and_keep_the_lr_schedule(tiny_model, tiny_dataset, tmp_path):
    from dice.training import main

    schedule = ["--lr_scheduler", "linear", "--desc", "linear"]
    args = _base(tiny_model("sd15"), tiny_dataset, tmp_path / "two", 4, 4) + schedule
    _launch(args + ["--n_gpus", "2"], processes=2, extra_launch=["--mixed_precision", "no"])
    run = next((tmp_path / "two").iterdir())
    options = json.loads((run / "training_options.json").read_text())
    assert options["num_processes"] == 2 and options["global_batch_size"] == 4
    assert "identical on all 2 process(es)" in (run / "log.txt").read_text()
    # The schedule follows updates, not updates x processes: the same lr per step as one process.
    single = main("sd15", _base(tiny_model("sd15"), tiny_dataset, tmp_path / "one", 4, 4) + schedule)
    assert _logged_lr(single) == pytest.approx([1.5e-4, 1e-4, 5e-5, 0.0])
    assert _logged_lr(run) == _logged_lr(single)


def test_n_gpus_mismatch_is_an_error(tiny_model, tiny_dataset, tmp_path):
    proc = _launch(_base(tiny_model("sd15"), tiny_dataset, tmp_path, 1, 1) + ["--n_gpus", "8"], check=False)
    assert proc.returncode != 0 and "--n_gpus=8 but accelerate started 1 process" in proc.stderr


@pytest.mark.parametrize("method", ["dice", "gd"])
def test_ema_is_what_sampling_uses_and_resumes_bit_identically(method, tiny_model, tiny_dataset, tmp_path):
    """--ema_decay: the checkpoint's method files hold the average, accelerate's model.safetensors the raw
    weights; sampling loads the average; a resumed run ends with the same average and raw weights."""
    import torch

    from dice.errors import UserError
    from dice.methods import load_trained
    from dice.training import main

    def files(checkpoint):
        if method == "dice":
            averaged = load_file(str(checkpoint / "sharpener.safetensors"))
        else:
            averaged = load_file(str(checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))
        return averaged, load_file(str(checkpoint / "model.safetensors"))

    common = _base(tiny_model("sd15"), tiny_dataset, tmp_path / "exps", 4, 2) + [
        "--method", method, "--ema_decay", "0.9", "--learning_rate", "1e-3", "--mixed_precision", "no"]
    run_dir = main("sd15", common)
    averaged, raw = files(run_dir / "checkpoint-4")
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw), "the average must differ from the raw weights"
    trained = load_trained(str(run_dir), root=tmp_path / "exps")
    loaded = {k: v.float() for k, v in trained.module.state_dict().items()}
    assert all(torch.equal(loaded[k], averaged[k].float()) for k in averaged), "sampling must use the average"
    assert trained.config.training_options["ema_decay"] == 0.9

    main("sd15", common + ["--resume_from_checkpoint", str(run_dir / "checkpoint-2")])
    averaged_again, raw_again = files(run_dir / "checkpoint-4")
    for before, after in ((averaged, averaged_again), (raw, raw_again)):
        assert all(torch.equal(before[k], after[k]) for k in before)
    # The average cannot be continued under another decay (or none).
    with pytest.raises(UserError, match="--ema_decay"):
        main("sd15", _base(tiny_model("sd15"), tiny_dataset, tmp_path / "exps", 4, 2) + [
            "--method", method, "--resume_from_checkpoint", str(run_dir / "checkpoint-2")])
