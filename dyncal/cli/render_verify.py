"""What ``dyncal verify`` prints: agreement and timing per batch size, request latency, runtime, throughput."""

from __future__ import annotations

from typing import Any

import typer

from dyncal.cli.params import flag_of
from dyncal.cli.render import _print_table, _table
from dyncal.errors import render_params


def print_verify(doc: dict[str, Any], ctx: typer.Context) -> None:
    """``dyncal verify``: agreement with the simulation, measured against predicted ms per batch size, the runtime."""
    from dyncal.measurement import NOISE_IQR_FRACTION, noise_advice

    settings = doc["settings"]
    typer.echo(
        f"{doc['n']} samples on {doc['device']} ({doc['hardware']}), threads: {doc['threads']} "
        f"(from {settings.get('threads_from', '?')}): agreement with the simulation {100 * doc['agreement']:.2f}% "
        f"(exits {100 * doc['exit_agreement']:.2f}%); accuracy runtime {100 * doc['runtime_accuracy']:.2f}% "
        f"vs simulated {100 * doc['simulated_accuracy']:.2f}%"
    )
    table = _table(
        "ms per batch: early exit and plain deployment (stages + last head) timed in pairs",
        ("", "measured", "predicted", "meas/pred", "plain", "speed-up [95%]", "batches"),
        compact=True,
    )
    coverage = settings.get("coverage", {})
    for t in doc["timings"]:
        pred = t["predicted_ms"]
        ratio = t["measured_over_predicted"]
        cov = coverage.get(t["key"], {})
        lo, hi = t["speedup_ci"]
        table.add_row(
            t["key"],
            f"{t['measured_ms']:.3f}",
            "-" if pred is None else f"{pred:.3f}",
            "-" if ratio is None else f"{ratio:.2f}",
            f"{t['full_model_ms']:.3f}",
            f"{t['speedup']:.2f}x [{lo:.2f}, {hi:.2f}]",
            f"{t['batches']}/{cov.get('batches', t['batches'])}",
        )
    _print_table(table)
    stopped = [k for k, c in coverage.items() if c.get("stopped_early")]
    if stopped:
        timed = "; ".join(
            f"{k}: {coverage[k].get('samples_timed', 0):,} of {doc['n']:,} samples timed" for k in stopped
        )
        typer.echo(
            f"time bound {settings['max_seconds']:g} s: {timed} (agreement covers all {doc['n']:,}); "
            "a speed-up timed on too few samples is inconclusive: raise --max-seconds to time more"
        )
    for t in doc["timings"]:
        print_request_distribution(t)
    for t in doc["timings"]:
        if t["timing_spread"] > NOISE_IQR_FRACTION:
            typer.echo(
                f"warning: noisy timing at {t['key']}: the paired speed-up's spread (IQR) is "
                f"{100 * t['timing_spread']:.0f}% of its median (> {100 * NOISE_IQR_FRACTION:.0f}%); "
                f"{render_params(noise_advice(doc['threads'], settings.get('repeats')), lambda n: flag_of(ctx, n))}"
            )
    print_runtime_and_throughput(doc)


def print_runtime_and_throughput(doc: dict[str, Any]) -> None:
    """``dyncal verify``: the runtime both sides ran under, and ``--throughput``'s samples/s with its advice."""
    from dyncal.artifacts.throughput import ThroughputResult

    runtime = doc["settings"].get("runtime")
    if isinstance(runtime, dict):
        typer.echo(f"runtime: early exit {runtime.get('early_exit')}, plain model {runtime.get('plain')}")
    entries = doc.get("throughput") or []
    if not entries:
        return
    typer.echo("samples/s over the same rows (speed-up over the plain deployment under the same runtime):")
    for t in entries:
        sps, sp = t["samples_per_s"], t["speedup"]
        modes = [f"per-batch early exit {sps['per_batch']:.1f} ({sp['per_batch']:.2f}x)"]
        if "rebatched" in sps:
            modes.append(f"throughput mode {sps['rebatched']:.1f} ({sp['rebatched']:.2f}x)")
        macs = "" if t["macs_ratio"] is None else f"; MACs ratio {t['macs_ratio']:.2f}x"
        typer.echo(
            f"  {t['key']}, {t['samples']} rows: {', '.join(modes)}, plain deployment {sps['plain']:.1f}{macs}; "
            f"agreement {100 * t['agreement']:.2f}%"
        )
        typer.echo(f"  deploy {t['recommendation']}: {ThroughputResult.from_dict(t).advice}")


def print_request_distribution(timing: dict[str, Any]) -> None:
    """The latency distribution verify measured at one batch size: per request (batch 1) or per batch, by exit."""
    requests, estimate = timing.get("requests"), timing.get("estimate")
    if estimate:
        typer.echo(
            f"{timing['key']}: speed-up {estimate['speedup']:.2f}x by the {estimate['estimator']} estimator "
            f"({estimate['discarded_pairs']} of {estimate['pairs']} pairs discarded as preempted)"
        )
    if not requests or not requests.get("summaries"):
        return
    unit = "request" if requests["batch_size"] == 1 else "batch"
    typer.echo(f"ms per {unit} at {timing['key']}: {requests['coverage']}")
    stats = ("mean", "std", "p50", "p90", "p95", "p99", "max")
    table = _table("", ("", "n", *stats, "p99 95%"), compact=True)
    names = {"early_exit": "early exit", "plain": "plain"}
    for s in requests["summaries"]:
        if s["exit"] is not None and (s["side"] == "plain" or s["view"] == "raw"):
            continue  # by exit: the early exit's fastest view only (the plain deployment does not exit)
        label = f"  at exit {s['exit'] + 1}" if s["exit"] is not None else names[s["side"]]
        lo, hi = s["p99_ms_ci"]
        table.add_row(
            label + (", raw" if s["view"] == "raw" else ""),
            str(s["units"]),
            *(_ms3(s[f"{name}_ms"]) for name in stats),
            f"{_ms3(lo)}-{_ms3(hi)}",
        )
    _print_table(table)
    typer.echo("fastest of each unit's pairs (noise-reduced) unless marked raw (every pair)")


def _ms3(ms: float) -> str:
    """Milliseconds in at most five characters below 10 s: 0.053, 12.35, 123.5, 1234."""
    digits = 3 if ms < 10 else 2 if ms < 100 else 1 if ms < 1000 else 0
    return f"{ms:.{digits}f}"
