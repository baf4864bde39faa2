"""`python -m loaders.train` under torchrun with 2 CPU processes (gloo on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from .datasets import manifest


def test_train_runs_under_torchrun_with_two_processes(many, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"train:\n  dataset: {many}\n  batch_size: 4\n  num_workers: 1\n"
                      "  image_size: 32\n  max_steps: 3\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
         "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "loaders.train", "--config", str(config)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "trained 3 steps" in output
    # Evaluation summed over both ranks: every val sample counted once.
    counted = re.search(r"val accuracy [\d.]+% on (\d+) samples", output)
    assert counted and int(counted.group(1)) == manifest(many)["splits"]["val"]["num_samples"]


def test_a_missing_dataset_is_one_line_naming_the_cure(tmp_path, capsys):
    from loaders.train import main

    config = tmp_path / "train.yaml"
    config.write_text("train:\n  dataset: nowhere\n  max_steps: 1\n")
    assert main(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "no manifest.json" in error and "--dataset" in error and "Traceback" not in error
    assert main(["--config", str(config), "--max-steps", "0"]) == 2
    assert "--max-steps must be at least 1" in capsys.readouterr().err


def test_dataset_and_steps_can_be_given_on_the_command_line(many, tmp_path, capsys):
    from loaders.train import main

    config = tmp_path / "train.yaml"
    config.write_text("train:\n  dataset: nowhere\n  batch_size: 4\n  num_workers: 0\n"
                      "  image_size: 32\n  max_steps: 50\n")
    assert main(["--config", str(config), "--dataset", str(many), "--max-steps", "2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
