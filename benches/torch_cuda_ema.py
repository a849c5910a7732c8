"""PyTorch's EMA update on a GPU, on the parameter sets of benches/ema_update.rs, for the
side-by-side rows of BENCHMARKS.md (scripts/gpu-bundle runs it on the GPU machine next to the
Rust benchmarks, in the same session).

Usage: python3 benches/torch_cuda_ema.py [--device cuda] [--rounds 20] [--queued 50]

Two timings, as the Rust benchmarks take them: queued (`--queued` updates submitted back to back,
the device synchronised once; what a training loop pays) and synced each (synchronised after
every update: the submit-and-wait latency). Median over `--rounds`, ms per update.
"""
import argparse
import statistics
import time

import torch

DECAY = 0.999


def resnet50_sizes():
    """benches/common::resnet50: ResNet-50's 161 float tensors, 25,557,032 values (rank 1)."""
    sizes = [64 * 3 * 7 * 7, 64, 64]
    inp = 64
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for b in range(blocks):
            out = width * 4
            sizes += [width * inp, width, width, width * width * 9, width, width, out * width, out, out]
            if b == 0:
                sizes += [out * inp, out, out]
            inp = out
    sizes += [1000 * 2048, 1000]
    assert len(sizes) == 161 and sum(sizes) == 25_557_032
    return [(n,) for n in sizes]


def resnet50_div8_shapes():
    """benches/common::ResNet50Div8: the same 161 tensors at their ranks, channels / 8."""
    kernels, vectors = [], []

    def conv(out, inp, k):
        kernels.append((out, inp, k, k))
        vectors.extend([(out,), (out,)])

    conv(8, 3, 7)
    inp = 8
    for width, blocks in [(8, 3), (16, 4), (32, 6), (64, 3)]:
        for b in range(blocks):
            out = width * 4
            conv(width, inp, 1)
            conv(width, width, 3)
            conv(out, width, 1)
            if b == 0:
                conv(out, inp, 1)
            inp = out
    shapes = kernels + vectors + [(125, inp), (125,)]
    total = sum(torch.Size(s).numel() for s in shapes)
    assert len(shapes) == 161 and total == 406_277, (len(shapes), total)
    return shapes


SETS = [
    ("resnet50-161x", resnet50_sizes()),
    ("flat-25.6M", [(25_557_032,)]),
    ("launch-bound (ResNet-50 / 8, 161 tensors)", resnet50_div8_shapes()),
    ("launch-bound flat (406,277 values)", [(406_277,)]),
]


def foreach_lerp(shadow, params):  # timm ModelEmaV3, torch AveragedModel's multi-avg path
    torch._foreach_lerp_(shadow, params, 1.0 - DECAY)


def loop_lerp(shadow, params):
    for s, p in zip(shadow, params):
        s.lerp_(p, 1.0 - DECAY)


def timed(fn, shadow, params, queued, rounds, sync):
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(queued):
            fn(shadow, params)
        sync()
        times.append((time.perf_counter() - start) / queued)
    return statistics.median(times) * 1e3


def synced_each(fn, shadow, params, queued, rounds, sync):
    def once(s, p):
        fn(s, p)
        sync()

    return timed(once, shadow, params, queued, rounds, sync)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--queued", type=int, default=50)
    args = ap.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; ms per update, median of {args.rounds} rounds")
    print("| set | tensors | `_foreach_lerp_` queued | synced each | loop `lerp_` queued |")
    print("|---|---:|---:|---:|---:|")
    with torch.no_grad():
        for set_name, shapes in SETS:
            params = [torch.rand(s, device=device) for s in shapes]
            shadow = [p.clone().add_(0.01) for p in params]
            for _ in range(3):
                foreach_lerp(shadow, params)
                loop_lerp(shadow, params)
            sync()
            row = [
                timed(foreach_lerp, shadow, params, args.queued, args.rounds, sync),
                synced_each(foreach_lerp, shadow, params, args.queued, args.rounds, sync),
                timed(loop_lerp, shadow, params, args.queued, args.rounds, sync),
            ]
            print(f"| {set_name} | {len(shapes)} | " + " | ".join(f"{t:.4f}" for t in row) + " |")


if __name__ == "__main__":
    main()
