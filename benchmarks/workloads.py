"""The parameter sets the step is timed on, generated from their shapes (no downloads).

Flat sets are one contiguous tensor of N elements (a flattened parameter buffer, as Apex and ZeRO keep
them); ResNet-50 and GPT-2 small are the real models' parameter lists, tensor for tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    overhead: bool = False  # tiny tensors: the step's time is its host (Python and launch) time

    @property
    def numel(self) -> int:
        return sum(prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def flat(numel: int) -> Workload:
    label = f"{numel // 2**30}G" if numel >= 2**30 else f"{numel // 2**20}M"
    return Workload(f"flat-{label}", ((numel,),))


def resnet50() -> Workload:
    """torchvision's resnet50: conv + batch-norm (weight, bias) per layer, bottleneck blocks [3, 4, 6, 3]
    with expansion 4, a 1x1 downsample in each stage's first block, and the 1000-way classifier."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    channels = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            shapes += [
                (width, channels, 1, 1),
                (width,),
                (width,),
                (width, width, 3, 3),
                (width,),
                (width,),
                (4 * width, width, 1, 1),
                (4 * width,),
                (4 * width,),
            ]
            if block == 0:
                shapes += [(4 * width, channels, 1, 1), (4 * width,), (4 * width,)]
            channels = 4 * width
    shapes += [(1000, 2048), (1000,)]
    return Workload("resnet50", tuple(shapes))


def gpt2_small(vocab: int = 50257, context: int = 1024, width: int = 768, layers: int = 12) -> Workload:
    """GPT-2 small (tied embeddings): token and position embeddings, 12 blocks of layer norm, fused QKV
    attention, projection, layer norm and a 4x MLP, each with biases, and the final layer norm."""
    shapes = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [
            (width,),
            (width,),
            (width, 3 * width),
            (3 * width,),
            (width, width),
            (width,),
            (width,),
            (width,),
            (width, 4 * width),
            (4 * width,),
            (4 * width, width),
            (width,),
        ]
    shapes += [(width,), (width,)]
    return Workload("gpt2-small", tuple(shapes))


def tiny(workload: Workload) -> Workload:
    """The same tensor list with every dimension cut to at most 2: what is left is the host work."""
    return Workload(f"{workload.name}-tiny", tuple(tuple(min(d, 2) for d in s) for s in workload.shapes), True)


def overhead() -> list[Workload]:
    """Host time per step: 161 (ResNet-50's count) and 1000 one-element tensors, and the ResNet-50 and
    GPT-2 small lists at tiny sizes."""
    return [Workload(f"tensors-{n}", ((1,),) * n, True) for n in (161, 1000)] + [tiny(resnet50()), tiny(gpt2_small())]


def standard(device: str, largest: int) -> list[Workload]:
    """The overhead set, flat 1M..256M (1B where the device has room), ResNet-50, GPT-2 small; flat sets
    over `largest` elements are left out (memory and time on small machines)."""
    sizes = [2**20, 16 * 2**20, 64 * 2**20, 256 * 2**20] + ([2**30] if device == "cuda" else [])
    return overhead() + [flat(n) for n in sizes if n <= largest] + [resnet50(), gpt2_small()]
