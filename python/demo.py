"""The main job (`make demo`): the large-batch effect and what EXTRAP-SGD does about it, in a few minutes
on a CPU. A small ResNet on the bundled digits images, trained with batch 32 and with batch 512 (16x,
linear LR scaling and warm-up): SGD at both, EXTRAP-SGD (two-phase "local" and one-phase "past") at the
large one. Prints the table and writes out/demo/curves.png. On a GPU the optimizers use the cuda or
triton backend automatically. The full experiment (3 seeds, LARS, noise mode, all tasks) is
python/experiment.py; its committed results are in python/results/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import experiment  # noqa: E402

import extrap_kernels as ek  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"extrap-kernels {ek.__version__}, torch {torch.__version__}, device {device}, "
        f"backend auto -> {ek.backends.resolve('auto', torch.device(device)).name}"
    )
    # gamma 0.05: the digits sweep's stable value (python/results/README.md); the default gamma = lr
    # reaches 0.8 at batch 512, where local extrapolation is unstable
    experiment.main(
        [
            "--task",
            "digits",
            "--small",
            "32",
            "--large",
            "512",
            "--epochs",
            "20",
            "--seeds",
            "0",
            "--gamma",
            "0.05",
            "--configs",
            "SGD small batch",
            "SGD",
            "EXTRAP-SGD local",
            "EXTRAP-SGD past",
            "--out",
            "out/demo",
            *argv,
        ]
    )


if __name__ == "__main__":
    main()
