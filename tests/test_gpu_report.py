"""benchmarks/gpu_report.py's deadline, without a GPU: a lent machine's time is short, and the report must
end inside one device call with whatever it reached written down."""

from __future__ import annotations

import sys

from benchmarks import gpu_report


def test_steps_run_in_order_within_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_report, "LEAST", 1)
    monkeypatch.setattr(gpu_report, "BENCH_RESERVE", 1)
    py = sys.executable
    chosen = [
        ("first", [py, "-c", "print('first done')"], 60, ""),
        ("bench", [py, "-c", "import sys; print('told', sys.argv[1])", "{seconds}"], 60, ""),
        ("slow", [py, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"], 60, ""),
        ("late", [py, "-c", "print('late done')"], 60, ""),
        ("absent", None, 0, "no such tool here"),
    ]
    ok = gpu_report.run_steps(chosen, tmp_path, seconds=4, env={}, header="device: none", slug="dev")
    assert not ok  # the slow step was cut
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0] == "device: none"
    assert summary[1].startswith("first: exit 0") and summary[1].endswith("first done")
    # the benchmark's log is named by device, and it is told the seconds the deadline leaves it, less its reserve
    told = int((tmp_path / "dev.txt").read_text().split()[1])
    assert 1 <= told <= 3, told
    assert summary[3].startswith("slow: exit timeout after") and summary[3].endswith("sleeping")
    assert summary[4] == "late: skipped (the deadline has passed)"
    assert summary[5] == "absent: skipped (no such tool here)"
    assert not (tmp_path / "late.log").exists()


def test_a_step_gets_no_more_than_its_cap(tmp_path):
    step = ("capped", [sys.executable, "-c", "import time; time.sleep(30)"], 1, "")
    assert not gpu_report.run_steps([step], tmp_path, seconds=60, env={}, header="h", slug="dev")
    assert (tmp_path / "summary.txt").read_text().splitlines()[1].startswith("capped: exit timeout after 1 s")


def test_the_gpu_image_has_every_package_the_report_needs(tmp_path):
    """Nothing installs on the lent machine: every package the report runs with must be in its image (or be
    carried as a wheel). The check reads requirements-dev.txt, so a new requirement the image lacks fails
    here; and it can fail: a requirement the image has not is reported."""
    assert gpu_report.wheels_to_carry() == []
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# a comment\nnumpy>=2\nTriton==3.7.1  # pinned\nno-such-package[extra]; python_version>'3'\n"
    )
    assert gpu_report.requirement_names(requirements) == ["numpy", "triton", "no-such-package"]
    image = set(gpu_report.requirement_names(gpu_report.ROOT / "benchmarks" / "gpu_image.txt"))
    assert {"torch", "triton", "pytest", "hypothesis"} <= image and "no-such-package" not in image


def test_a_carried_extension_skips_the_build(tmp_path, monkeypatch):
    """Where an extension that imports with CUDA is in the tree, the build step is skipped and says which; where
    none imports (this machine's has no CUDA), the report builds. The probe's Python is stood in for."""
    monkeypatch.delenv("GPU_REPORT_DRY", raising=False)
    monkeypatch.setattr(gpu_report, "device_slug", lambda: "dev")
    found = tmp_path / "found.py"
    found.write_text("print('/tree/extrap_kernels/_C.so')\n")
    monkeypatch.setattr(gpu_report, "PY", sys.executable)
    monkeypatch.setattr(gpu_report.subprocess, "run", _probe_as(found, gpu_report.subprocess.run))
    command, _, why = gpu_report.steps(tmp_path)["build"]
    assert command is None and why.endswith("/tree/extrap_kernels/_C.so")
    found.write_text("raise SystemExit(1)\n")
    command, _, _ = gpu_report.steps(tmp_path)["build"]
    assert command is not None and command[1:3] == ["setup.py", "--quiet"]


def _probe_as(script, run):
    """subprocess.run, with the import probe (`python -c ...`) replaced by `script`."""

    def probe(command, **kwargs):
        if command[1:2] == ["-c"]:
            command = [command[0], str(script)]
        return run(command, **kwargs)

    return probe
