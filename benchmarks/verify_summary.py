"""One verify.json in a few lines: agreement, paired latency per batch size, and --throughput's samples/s.

What benchmarks/gpu_check.sh prints after each demo verify (tests/test_gpu_check.py runs it)::

    python benchmarks/verify_summary.py verify.json
"""

from __future__ import annotations

import json
import sys


def summary(doc: dict) -> list[str]:
    """The lines printed for one verify document."""
    lines = [f"agreement {doc['agreement']} hardware {doc['hardware']} runtime {doc['settings'].get('runtime')}"]
    for t in doc["timings"]:
        pred = t["predicted_ms"]
        lines.append(
            f"{t['key']} measured {t['measured_ms']:.4f} ms, predicted {'-' if pred is None else f'{pred:.4f}'}, "
            f"full model {t['full_model_ms']:.4f}, speed-up {t['speedup']:.2f} "
            f"[{t['speedup_ci'][0]:.2f}, {t['speedup_ci'][1]:.2f}]"
        )
    for t in doc.get("throughput", []):
        sps = ", ".join(f"{m} {v:.1f}" for m, v in t["samples_per_s"].items())
        speed = ", ".join(f"{m} {v:.2f}x" for m, v in t["speedup"].items() if m != "plain")
        ratio = "-" if t["macs_ratio"] is None else f"{t['macs_ratio']:.2f}x"
        lines.append(
            f"{t['key']} samples/s: {sps} ({speed}); MACs ratio {ratio}; agreement {t['agreement']}; "
            f"deploy {t['recommendation']}"
        )
    return lines


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(path)
            print("\n".join(summary(json.load(f))))
