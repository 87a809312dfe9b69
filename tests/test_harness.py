"""The training harness (python/train.py) end to end on the smallest task, and its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
pytest.importorskip("sklearn")
import plot  # noqa: E402
import train  # noqa: E402


@pytest.mark.parametrize(
    "optimizer",
    [
        ["--optimizer", "extrap-sgd", "--mode", "local"],
        ["--optimizer", "lars"],
        ["--optimizer", "fused-sgd"],
        ["--optimizer", "sgd"],
        ["--optimizer", "adamw", "--lr", "1e-3"],
        ["--optimizer", "lamb", "--lr", "1e-3"],
        ["--optimizer", "extrap-adamw", "--mode", "local", "--lr", "1e-3"],
        ["--optimizer", "extrap-lamb", "--mode", "past", "--lr", "1e-3"],
    ],
    ids=lambda a: a[1],
)
def test_harness_trains_and_logs(tmp_path, optimizer):
    args = train.parser().parse_args(
        ["--task", "digits", "--epochs", "2", "--batch-size", "256", "--out", str(tmp_path), "--quiet", *optimizer]
    )
    result = train.run(args)
    logged = json.loads((tmp_path / f"{result['label']}.json").read_text())
    assert [h["epoch"] for h in logged["history"]] == [1, 2]
    assert logged["history"][-1]["train_loss"] < logged["history"][0]["train_loss"] * 1.5
    assert 0.0 <= logged["history"][-1]["metric"] <= 1.0
    assert (tmp_path / f"{result['label']}.csv").read_text().startswith("epoch,train_loss,metric")


def test_plot_groups_seeds_and_draws(tmp_path):
    for seed in (0, 1):
        train.run(
            train.parser().parse_args(
                [
                    "--task",
                    "digits",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "256",
                    "--seed",
                    str(seed),
                    "--out",
                    str(tmp_path),
                    "--quiet",
                ]
            )
        )
    logs = sorted(tmp_path.glob("*.json"))
    assert [p.name for p in logs] == ["digits-sgd-b256-s0.json", "digits-sgd-b256-s1.json"]
    groups = plot.group_by_config([json.loads(p.read_text()) for p in logs])
    assert list(groups) == ["digits-sgd-b256"] and len(groups["digits-sgd-b256"]) == 2
    plot.main([*map(str, logs), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_plot_frame_leaves_out_diverged_runs():
    def runs(*curves):
        return [dict(higher_is_better=False, history=[dict(metric=m) for m in c]) for c in curves]

    frame = plot.metric_range(
        {
            "sgd": runs([3.0, 2.0], [3.2, 2.2]),
            "blew up": runs([3.0, 60.0], [3.0, 50.0]),
            "diverged": runs([3.0, float("nan")], [2.9, float("inf")]),
        }
    )
    assert 1.9 < frame[0] < 2.0 and 3.2 < frame[1] < 3.3  # only "sgd" frames the axes
    assert plot.metric_range({"diverged": runs([float("nan")])}) is None


def test_lr_schedule_scales_warms_up_and_decays():
    args = train.parser().parse_args(
        ["--batch-size", "512", "--base-batch-size", "32", "--epochs", "10", "--warmup-epochs", "2"]
    )
    factors = [train.lr_factor(args, it, per_epoch=10) for it in range(100)]
    assert factors[0] == 1.0 and factors[20] == pytest.approx(16.0)  # linear scaling after warm-up
    assert factors[10] == pytest.approx(8.5) and factors[-1] < 0.1  # half-way through warm-up; cosine end


def test_cifar10_without_data_says_where_to_get_it(tmp_path):
    args = train.parser().parse_args(["--task", "cifar10", "--data-dir", str(tmp_path), "--quiet"])
    with pytest.raises(SystemExit, match="data_batch_1.*--data-dir"):
        train.run(args)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_harness_under_torchrun(tmp_path, parallel):
    """The documented data-parallel command: two workers on CPU (gloo), extrap-sgd in local mode."""
    torch = pytest.importorskip("torch")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("no gloo")
    script = Path(__file__).resolve().parents[1] / "python" / "train.py"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        "--task",
        "digits",
        "--parallel",
        parallel,
        "--optimizer",
        "extrap-sgd",
        "--mode",
        "local",
        "--batch-size",
        "128",
        "--base-batch-size",
        "128",
        "--epochs",
        "2",
        "--quiet",
        "--out",
        str(tmp_path),
        "--label",
        "run",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads((tmp_path / "run.json").read_text())
    assert logged["world_size"] == 2 and logged["args"]["parallel"] == parallel
    assert [h["epoch"] for h in logged["history"]] == [1, 2]
    assert logged["history"][1]["train_loss"] < logged["history"][0]["train_loss"]  # it learns
    assert logged["history"][-1]["metric"] > 0.15  # 10 classes: above chance


def test_experiments_write_untracked_results_unless_told():
    """The README's experiment commands name no --out: they must not overwrite committed results."""
    import experiment

    out = experiment.default_out("char-lstm")
    assert out.parts[0] == "out" and "char-lstm" in out.parts
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(out / "results.md")], cwd=Path(__file__).resolve().parents[1]
    )
    assert ignored.returncode == 0  # git ignores it
