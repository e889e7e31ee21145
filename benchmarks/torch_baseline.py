"""PyTorch twins of cnn_jax models, measured the way `python -m cnn_jax.benchmark` measures them.

    python benchmarks/torch_baseline.py --model=resnet20 --batch=128 [--compile] [--json]

Train step: forward, softmax cross-entropy, backward, SGD with momentum 0.9 (lr 0.1), BatchNorm
statistics updated; inference: forward in eval mode under no_grad. Random non-zero inputs
resident on the device; images per second are the median over `--repeats` timed runs after a
warm-up. `first_step_s` is the wall time from building the model to the end of the first train
step (including torch.compile's compile with `--compile`). Networks (written here, the same
layers as the cnn_jax zoo): `lenet5` (conv 6@5x5 pad 2, max-pool, conv 16@5x5, max-pool,
fc 400-120-84-classes, ReLU), CIFAR `resnet20/32/44/56/110` (16-32-64 channels, option-A
shortcuts: strided subsampling + zero channel padding), `resnet18/34/50` (torchvision's v1.5;
torchvision's own classes are used when it is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
IMAGENET_RESNETS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                    50: ("bottleneck", (3, 4, 6, 3))}
MODELS = ["lenet5", *(f"resnet{d}" for d in CIFAR_DEPTHS), *(f"resnet{d}" for d in IMAGENET_RESNETS)]
DEFAULT_INPUT = {"lenet5": (28, 28, 1), **{f"resnet{d}": (32, 32, 3) for d in CIFAR_DEPTHS},
                 **{f"resnet{d}": (224, 224, 3) for d in IMAGENET_RESNETS}}
DEFAULT_CLASSES = {"lenet5": 10, **{f"resnet{d}": 10 for d in CIFAR_DEPTHS},
                   **{f"resnet{d}": 1000 for d in IMAGENET_RESNETS}}


class LeNet5(nn.Module):
    """The lecture's LeNet-5 (ReLU, max-pool): 61,706 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        side = ((image_size // 2) - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84),
            nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class CifarBlock(nn.Module):
    """Two 3x3 conv-BN layers; option-A shortcut (subsample, zero-pad channels at the end)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.stride != 1 or self.extra:
            x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(x + y)


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet with 6n+2 layers (269,722 parameters for depth 20)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(CifarBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class Bottleneck(Basic):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__(cin, width, stride)
        cout = width * self.expansion
        self.body = nn.Sequential(  # v1.5: the stride sits on the 3x3, as torchvision
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ImageNet ResNet v1.5 (same layers and parameter counts as torchvision's)."""

    def __init__(self, block: str, stages: tuple[int, ...], num_classes: int = 1000,
                 in_channels: int = 3):
        super().__init__()
        cls = Basic if block == "basic" else Bottleneck
        layers = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, n in enumerate(stages):
            for j in range(n):
                layers.append(cls(cin, 64 * 2 ** i, 2 if i > 0 and j == 0 else 1))
                cin = 64 * 2 ** i * cls.expansion
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def build(name: str, num_classes: int, in_channels: int, image_size: int) -> tuple[nn.Module, str]:
    """(module, which implementation) for a model name."""
    if name == "lenet5":
        return LeNet5(num_classes, in_channels, image_size), "own"
    depth = int(name[len("resnet"):])
    if depth in CIFAR_DEPTHS:
        return CifarResNet(depth, num_classes, in_channels), "own"
    block, stages = IMAGENET_RESNETS[depth]
    try:
        import torchvision
    except ImportError:
        return ResNet(block, stages, num_classes, in_channels), "own"
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net, f"torchvision {torchvision.__version__}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, calls: int, device: torch.device) -> tuple[float, float]:
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def run(args: argparse.Namespace) -> dict:
    """Measures one configuration; returns a JSON-ready dict (keys as cnn_jax.benchmark's)."""
    if args.model not in MODELS:
        import difflib
        close = difflib.get_close_matches(args.model, MODELS, n=1)
        raise ValueError(f"unknown model {args.model!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else "")
                         + f"; choose one of {MODELS}")
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)} must be >= 1")
    h, w, c = DEFAULT_INPUT[args.model]
    if args.image_size > 0:
        h = w = args.image_size
    c = args.channels if args.channels > 0 else c
    k = args.num_classes if args.num_classes > 0 else DEFAULT_CLASSES[args.model]
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    x = (torch.randn(args.batch, c, h, w, device=device) + 0.5).contiguous(memory_format=fmt)
    y = torch.randint(0, k, (args.batch,), device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if args.dtype == "bfloat16" else None)
    result = {"framework": "torch", "torch": torch.__version__, "model": args.model,
              "batch": args.batch, "input_shape": [h, w, c], "num_classes": k,
              "dtype": args.dtype, "compile": args.compile, "device": str(device),
              "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                              else platform.processor() or "cpu"),
              "threads": torch.get_num_threads(), "channels_last": channels_last,
              "keep_host_buffers": args.keep_host_buffers, "steps": args.steps,
              "repeats": args.repeats, "python": platform.python_version(),
              "loadavg_start": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    t_start = time.perf_counter()
    model, impl = build(args.model, k, c, h)
    model = model.to(device, memory_format=fmt)
    result["impl"] = impl
    result["params"] = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fwd = torch.compile(model) if args.compile else model

    def train_step():
        opt.zero_grad(set_to_none=True)
        if autocast is not None:
            with autocast:
                loss = F.cross_entropy(fwd(x).float(), y)
        else:
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        return loss

    if args.mode in ("train", "both"):
        model.train()
        loss = train_step()
        _sync(device)
        result["first_step_s"] = time.perf_counter() - t_start
        result["first_loss_finite"] = bool(torch.isfinite(loss).item())
        _timed(train_step, args.warmup, device)
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = _timed(train_step, args.steps, device)
            walls.append(wall)
            cpus.append(cpu)
        rates = [args.batch * args.steps / t for t in walls]
        result.update({"train_img_per_s": statistics.median(rates), "train_img_per_s_all": rates,
                       "train_step_ms": 1e3 * statistics.median(walls) / args.steps,
                       "train_cpu_ms_per_step": 1e3 * statistics.median(cpus) / args.steps})

    if args.mode in ("infer", "both"):
        model.eval()

        @torch.no_grad()
        def infer():
            if autocast is not None:
                with autocast:
                    return fwd(x)
            return fwd(x)

        t0 = time.perf_counter()
        infer()
        _sync(device)
        result["infer_first_s"] = time.perf_counter() - t0
        _timed(infer, args.warmup, device)
        walls = [_timed(infer, args.steps, device)[0] for _ in range(args.repeats)]
        rates = [args.batch * args.steps / t for t in walls]
        result.update({"infer_img_per_s": statistics.median(rates), "infer_img_per_s_all": rates})

    result["peak_memory_bytes"] = (torch.cuda.max_memory_allocated(device)
                                   if device.type == "cuda" else None)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", help=f"one of {MODELS}")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image_size", type=int, default=0, help="<= 0: the model's designed size")
    p.add_argument("--channels", type=int, default=0)
    p.add_argument("--num_classes", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--channels_last", type=lambda s: s.lower() in ("1", "true", "yes"),
                   default=None, help="memory format (default: on for CUDA)")
    p.add_argument("--keep_host_buffers", action="store_true",
                   help="the glibc malloc settings cnn_jax uses by default "
                        "(cnn_jax.host_memory), applied before the model is built")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.keep_host_buffers:  # a like-for-like baseline for cnn_jax's default
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from cnn_jax import host_memory
        if not host_memory.keep_host_buffers():
            sys.exit("error: --keep_host_buffers needs glibc (Linux)")
    try:
        result = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"torch {result['torch']} {args.model} batch {args.batch} on {result['device']}"
          f"{' (compiled)' if args.compile else ''}: "
          f"train {result.get('train_img_per_s', float('nan')):,.1f} img/s, "
          f"infer {result.get('infer_img_per_s', float('nan')):,.1f} img/s, "
          f"first step {result.get('first_step_s', float('nan')):.2f} s")


if __name__ == "__main__":
    main()
