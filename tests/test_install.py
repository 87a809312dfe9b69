"""The package without its compiled extension: it imports, the foreach and reference backends run, and
EXTRAP_JIT=1 without a compiler says what is missing instead of failing the step. (The install commands
themselves run in fresh virtualenvs in CI: `make install-check`.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
# this copy of the package, not the checkout an editable install points at
sys.meta_path = [f for f in sys.meta_path if getattr(f, '__name__', '') != '_EditableFinder']
import torch, extrap_kernels as ek
assert ek.__file__.startswith(sys.argv[1]), ek.__file__
print(sorted(ek.available_backends('cpu')))
p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)
opt = ek.ExtrapSGD([p], lr=0.5)
opt.step()
print(opt.resolved_backends()[(torch.device('cpu'), torch.float32)], p.tolist())
try:
    ek.ExtrapSGD([p], lr=0.5, backend='cpu').step()
except RuntimeError as err:
    print('refused:', err)
"""


def _copy_without_extension(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "extrap_kernels", tmp_path / "extrap_kernels", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    return tmp_path


def _probe(tmp_path, **env):
    root = _copy_without_extension(tmp_path)
    full_env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0", **env}
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], cwd=root, env=full_env, capture_output=True, text=True, timeout=300
    )


def test_without_the_extension_the_python_backends_run(tmp_path):
    result = _probe(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "cpu" not in lines[0]
    assert lines[1].startswith("foreach")  # "auto" falls back
    assert "refused: backend 'cpu' is not available" in lines[2]


def test_jit_without_a_compiler_says_so(tmp_path):
    result = _probe(tmp_path, EXTRAP_JIT="1", CXX="no-such-compiler-here")
    assert result.returncode == 0, result.stderr
    assert "needs a C++17 compiler: 'no-such-compiler-here' is not on PATH" in result.stdout


OLD_TORCH = """
import torch
torch.__version__ = sys.argv[1]  # as an older torch reports itself
try:
    import extrap_kernels
except ImportError as err:
    print('refused:', err)
else:
    print('imported', extrap_kernels.__version__)
"""


def test_an_older_torch_is_refused_at_import_with_the_reason():
    """Below the oldest torch that is built and tested (extrap_kernels.OLDEST_TORCH) the import says which
    torch it found and what to do; the oldest itself, and a local build of it, import."""

    def probe(version):
        return subprocess.run(
            [sys.executable, "-c", "import sys\n" + OLD_TORCH, version],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout

    assert "refused: extrap-kernels needs torch >= 2.11; this Python has torch 2.10.0+cu128. Upgrade torch" in probe(
        "2.10.0+cu128"
    )
    assert "refused: extrap-kernels needs torch >= 2.11" in probe("1.13.1")
    assert "imported" in probe("2.11.0+cu130")
    assert "imported" in probe("2.14.0a0+git1234")
