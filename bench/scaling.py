"""Data-parallel scaling on paper: ring all-reduce against the compute of a step.

    python bench/scaling.py > docs/scaling_table.txt

For each benchmark configuration (an MLP and its global batch) and 1 to 64
GPUs, a step costs

    t(N) = floor + flops(B) / (N * rate) + all_reduce(N)
    all_reduce(N) = 2 (N - 1) / N * gradient_bytes / bandwidth + 2 (N - 1) * latency

(the gradients are summed after the backward pass, as portnn does: no
overlap), against t(1) = floor + flops(B) / rate on one GPU. The speedup is
t(1) / t(N) and the efficiency speedup / N. Every rate, bandwidth, latency and
the per-step floor are assumptions (options below), not measurements.
"""

from __future__ import annotations

import argparse

CONFIGS = [  # (layer widths, global batch)
    ((784, 1024, 1024, 10), 64),
    ((784, 1024, 1024, 10), 1024),
    ((784, 1024, 1024, 10), 8192),
    ((1024, 4096, 4096, 4096, 10), 8192),
]
GPUS = (1, 2, 4, 8, 16, 32, 64)
NVLINK_GPUS = 8  # one NVLink/NVSwitch domain (a node); beyond it the ring crosses the network


def parameters(widths: tuple[int, ...]) -> int:
    return sum(i * o + o for i, o in zip(widths, widths[1:]))


def step_flops(widths: tuple[int, ...], batch: int) -> float:
    """Matrix-product FLOPs of one training step: forward, weight gradients, input
    gradients (none for the first layer's input)."""
    macs = [i * o for i, o in zip(widths, widths[1:])]
    return 2.0 * batch * (sum(macs) + sum(macs) + sum(macs[1:]))


def all_reduce_seconds(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", type=float, default=51e12, help="FP32 matrix FLOP/s of one GPU (H100: ~51e12)")
    parser.add_argument("--tf32", type=float, default=370e12, help="TF32 matrix FLOP/s of one GPU (H100: ~370e12)")
    parser.add_argument("--floor", type=float, default=200e-6, help="seconds of launches and Python per step (assumed 200 µs)")
    parser.add_argument("--grad-bytes", type=int, default=4, help="bytes per gradient value (4: float32)")
    args = parser.parse_args(argv)
    links = [  # (name, bytes/s per direction, seconds per hop)
        ("NVLink", 450e9, 5e-6),
        ("400Gb/s", 400e9 / 8, 10e-6),
        ("100Gb/s", 100e9 / 8, 10e-6),
    ]
    print(
        f"assumed: FP32 {args.fp32 / 1e12:g} TFLOP/s, TF32 {args.tf32 / 1e12:g} TFLOP/s, "
        f"{args.floor * 1e6:g} us per step of launches and Python, float{8 * args.grad_bytes} gradients;"
    )
    print("links per GPU and direction: " + ", ".join(f"{n} {bw / 1e9:g} GB/s ({lat * 1e6:g} us/hop)" for n, bw, lat in links))
    print("NVLink only within 8 GPUs. speedup = t(1) / t(N), no overlap of communication and compute.")
    verdicts = []
    for widths, batch in CONFIGS:
        p = parameters(widths)
        nbytes = p * args.grad_bytes
        flops = step_flops(widths, batch)
        name = "-".join(map(str, widths))
        print()
        print(f"MLP {name}, global batch {batch}: {p / 1e6:.2f} M parameters, {nbytes / 1e6:.1f} MB of gradients, "
              f"{flops / 1e9:.2f} GFLOP per step")
        header = f"{'GPUs':>4} | {'compute/GPU ms':>15} | {'all-reduce ms':^26} | {'speedup FP32':^22} | {'speedup TF32':^22}"
        sub = f"{'':>4} | {'FP32':>7} {'TF32':>7} | " + " ".join(f"{n:>8}" for n, _, _ in links) + " | " + \
            " ".join(f"{n:>7}"[:7] for n, _, _ in links) + " | " + " ".join(f"{n:>7}"[:7] for n, _, _ in links)
        print(header)
        print(sub)
        print("-" * len(sub))
        best: dict[tuple[str, str], int] = {}
        for n in GPUS:
            compute = {prec: flops / (n * rate) for prec, rate in (("FP32", args.fp32), ("TF32", args.tf32))}
            reduce = {}
            for link, bw, lat in links:
                reduce[link] = None if (link == "NVLink" and n > NVLINK_GPUS) else all_reduce_seconds(n, nbytes, bw, lat)
            speedups = {}
            for prec, rate in (("FP32", args.fp32), ("TF32", args.tf32)):
                t1 = args.floor + flops / rate
                for link, _, _ in links:
                    if reduce[link] is None:
                        speedups[prec, link] = None
                        continue
                    s = t1 / (args.floor + compute[prec] + reduce[link])
                    speedups[prec, link] = s
                    if s / n >= 0.5:
                        best[prec, link] = n

            def cell(v: float | None, fmt: str, width: int) -> str:
                return f"{'-':>{width}}" if v is None else f"{v:{width}{fmt}}"

            print(
                f"{n:>4} | {compute['FP32'] * 1e3:7.3f} {compute['TF32'] * 1e3:7.3f} | "
                + " ".join(cell(None if reduce[l] is None else reduce[l] * 1e3, ".3f", 8) for l, _, _ in links)
                + " | " + " ".join(cell(speedups["FP32", l], ".1f", 7) for l, _, _ in links)
                + " | " + " ".join(cell(speedups["TF32", l], ".1f", 7) for l, _, _ in links)
            )
        verdicts.append(
            f"{name} batch {batch}: "
            + "; ".join(
                f"{prec} " + ", ".join(f"{link} {best.get((prec, link), 1)}" for link, _, _ in links)
                for prec in ("FP32", "TF32")
            )
        )
    print()
    print("largest N at which the efficiency is still >= 50% (speedup >= N/2):")
    for line in verdicts:
        print("  " + line)


if __name__ == "__main__":
    main()
