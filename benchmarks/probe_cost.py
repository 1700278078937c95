"""The token-metrics probe alone: seconds for one row of logits, against what a step already does.

Times ``entropy_and_argmax_hit`` (the probe the engine's logits hook runs) on random logits of
``--tokens`` rows by ``--vocab`` columns, next to verl's ``logprobs_from_logits`` (the log-prob pass every
forward already makes over the same logits) and the textbook entropy ``-(softmax * log_softmax).sum``.
Each is the median of ``--repeats`` runs, in this process, on ``--threads`` CPU threads (or the GPU
with ``--device cuda``).

    python -m benchmarks.probe_cost                     # 2,048 x 151,646 logits, like one Qwen2.5 row

The last line reads ``probe <s> log-probs <s> probe/log-probs <ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recipe.psft.token_metrics import entropy_and_argmax_hit


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151_646)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from verl.utils.torch_functional import logprobs_from_logits

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(args.tokens, args.vocab, generator=gen, device=device) * 3
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=gen, device=device)

    with torch.no_grad():
        entropy, _ = entropy_and_argmax_hit(logits, labels)
        textbook = -(torch.softmax(logits.double(), -1) * torch.log_softmax(logits.double(), -1)).sum(-1)
        error = float(((entropy.double() - textbook) / textbook).abs().max())
        probe = median_seconds(lambda: entropy_and_argmax_hit(logits, labels), args.repeats, device)
        log_probs = median_seconds(lambda: logprobs_from_logits(logits, labels), args.repeats, device)
        plain = median_seconds(
            lambda: -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1), args.repeats, device
        )
    print(f"logits {args.tokens} x {args.vocab} on {device} ({args.threads} threads), median of {args.repeats}")
    print(f"probe (entropy + argmax hit)     {probe:.3f} s   max relative error vs float64 {error:.1e}")
    print(f"textbook -(softmax*log_softmax)  {plain:.3f} s")
    print(f"verl logprobs_from_logits        {log_probs:.3f} s")
    print(f"probe {probe:.3f} log-probs {log_probs:.3f} probe/log-probs {probe / log_probs:.2f}")


if __name__ == "__main__":
    main()
