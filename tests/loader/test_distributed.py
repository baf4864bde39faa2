"""Real torch.distributed: 2 processes on gloo (CPU, 127.0.0.1), each with real workers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from .datasets import shards, truth

WORLD = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def damaged(many, tmp_path_factory):
    """A copy of `many` whose third val and first train shards are cut inside a member."""
    target = tmp_path_factory.mktemp("damaged") / "dataset"
    shutil.copytree(many, target)
    for victim in (shards(target, "train")[0], shards(target, "val")[2]):
        path = target / victim["name"]
        with tarfile.open(path) as tar:
            member = tar.getmembers()[len(tar.getmembers()) // 2]
        with open(path, "r+b") as stream:
            stream.truncate(member.offset_data + member.size // 2)
    return target, victim


@pytest.fixture(scope="module")
def ranks(uneven, many, single, damaged, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    datasets = {"uneven": str(uneven), "many": str(many), "single": str(single),
                "damaged": str(damaged[0])}
    tests_dir = Path(__file__).resolve().parent.parent
    env = {**os.environ, "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "loader.dist_ranks", json.dumps(datasets),
                               str(out)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            pytest.fail("distributed ranks did not finish: a hang")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    return ([json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)],
            [(out / f"rank{r}.log").read_text() for r in range(WORLD)])


def _flat(batches):
    return [k for batch in batches for k in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_uneven_shards_give_equal_full_batches_on_every_rank(ranks, workers):
    results, _ = ranks
    runs = [r[f"uneven_w{workers}"] for r in results]
    # 10 + 10 + 4 samples, batch 4, 2 ranks: 3 batches each, all full, no rank waiting.
    assert [run["len"] for run in runs] == [3, 3]
    assert [[len(b) for b in run["batches"]] for run in runs] == [[4, 4, 4]] * 2


def _shard_sequence(dataset, batches):
    where = {k: shard for k, (_, shard) in truth(dataset, "train").items()}
    sequence = []
    for key in _flat(batches):
        if not sequence or sequence[-1] != where[key]:
            sequence.append(where[key])
    return sequence


def test_shard_order_differs_between_epochs_and_repeats_for_the_same_seed(ranks, many):
    results, _ = ranks
    for result in results:
        epoch0, epoch1 = result["epochs_seed0"]
        assert epoch0 == result["epochs_seed0_again"][0]           # same seed, same epoch
        assert _shard_sequence(many, epoch0) != _shard_sequence(many, epoch1)
        assert epoch0 != result["epochs_seed1"][0]                 # another seed
    # Within one epoch no shard is read by two workers (8 shards >= 2 ranks x 2 workers).
    shard_readers = Counter()
    for result in results:
        for epoch in result["epochs_seed0"]:
            shard_readers.update(set(_shard_sequence(many, epoch)))
    assert set(shard_readers.values()) == {2}  # each shard once per epoch, 2 epochs


@pytest.mark.parametrize("name", ["many", "single"])
def test_val_gives_every_sample_exactly_once_across_ranks_and_workers(ranks, name, request):
    results, _ = ranks
    dataset = request.getfixturevalue(name)
    keys = [k for r in results for k in r[f"{name}_val"]["keys"]]
    assert sorted(keys) == sorted(truth(dataset, "val"))
    labels = [cls for cls, _ in truth(dataset, "val").values()]
    for result in results:  # summed over ranks: exact even when the count is uneven
        assert result[f"{name}_eval"]["total"] == len(labels)
        assert result[f"{name}_eval"]["correct"] == labels.count(0)


def test_one_shard_with_two_ranks_trains_equal_epochs_and_warns_once(ranks, single):
    results, logs = ranks
    runs = [r["single_train"] for r in results]
    assert runs[0]["len"] == runs[1]["len"] > 0
    assert [len(run["batches"]) for run in runs] == [runs[0]["len"]] * 2
    keys = [k for run in runs for k in _flat(run["batches"])]
    assert len(keys) == len(set(keys))  # strided, not duplicated, across the 4 workers
    # Once per run: rank 0 warns once per split, rank 1 never.
    assert logs[0].count(f"{single}:train: 1 shards for 2 ranks x 2 workers") == 1
    assert logs[0].count(f"{single}:val: 1 shards for 2 ranks x 2 workers") == 1
    assert "shards for" not in logs[1]


def test_a_shard_cut_in_the_middle_is_skipped_with_a_log_line(ranks, damaged, many):
    results, logs = ranks
    dataset, victim = damaged
    expected = truth(many, "val")
    keys = [k for r in results for k in r["damaged_val"]["keys"]]
    others = {k for k, (_, shard) in expected.items() if shard != victim["name"]}
    assert len(keys) == len(set(keys)) and others <= set(keys)
    survivors = len(keys) - len(others)
    assert sum(r["damaged_val"]["skipped"] for r in results) == victim["num_samples"] - survivors
    assert all(r["damaged_eval"]["total"] == len(keys) for r in results)
    lines = [line for log in logs for line in log.splitlines()
             if "damaged shard" in line and victim["name"] in line]
    assert lines and all(" at byte " in line for line in lines)
    # Training on the damaged split still gives every rank the same full batches.
    runs = [r["damaged_train"] for r in results]
    assert [len(run["batches"]) for run in runs] == [runs[0]["len"]] * 2
    assert all(len(batch) == 2 for run in runs for batch in run["batches"])
    train_victim = shards(dataset, "train")[0]["name"]
    assert any("damaged shard" in line and train_victim in line
               for log in logs for line in log.splitlines())
