r"""An exported early-exit package behind a real HTTP server (FastAPI + uvicorn), rolled out as a canary.

A ``canary`` share of requests is answered by the early exit, with telemetry on (one row per
request; on a ``shadow`` share also the plain model's prediction); the rest by the plain model
(every stage, the last exit), as before the rollout. ``dyncal monitor`` reads the telemetry
and says whether to widen the canary (PROCEED), wait (HOLD) or go back (ROLLBACK).

Run it (needs ``pip install 'dyncal[serve,rollout]'``)::

    python examples/serve/app.py --package pkg --telemetry telemetry --canary 0.05 --shadow 0.1 --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' \
        -d '{"inputs": [[...]], "request_ids": ["a1"]}'
    dyncal monitor run --thresholds thresholds.json --telemetry telemetry

``POST /predict`` takes ``inputs``, a batch of samples of the package's input shape (nested
lists), and optional ``request_ids`` (to join labels that arrive later, ``monitor --labels``);
it answers ``predictions``, ``exits`` (from 0; null on the plain path) and ``path`` per sample.
``GET /healthz`` says which package is served. Stop the server with SIGTERM or Ctrl-C: the
telemetry is flushed and finished as Parquet on the way out (a killed server loses at most the
rows not yet flushed).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import dyncal
from dyncal.errors import DyncalError


class PredictRequest(BaseModel):
    """A batch of samples, each of the package's input shape, and optional ids."""

    inputs: list[Any]
    request_ids: list[str] | None = None


def create_app(package: Path, telemetry: Path, *, canary: float, shadow: float, seed: int | None = None) -> FastAPI:
    """The FastAPI app serving ``package``: a ``canary`` share on early exit with telemetry, the rest plain."""
    if not 0.0 <= canary <= 1.0:
        raise DyncalError(f"the canary share must be in [0, 1], got {canary}")
    runner = dyncal.load_early_exit(package, telemetry=telemetry, shadow=shadow)
    rng = np.random.default_rng(seed)
    one_at_a_time = threading.Lock()  # FastAPI runs sync handlers on a thread pool; the model uses every core
    shape = tuple(runner.manifest.input_shape)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if runner.telemetry is not None:
            runner.telemetry.close()  # flush, finish the segment as Parquet

    app = FastAPI(title="dyncal early exit", lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"package": str(package), "manifest_sha256": runner.manifest_sha256, "canary": canary, "shadow": shadow}

    @app.post("/predict")
    def predict(req: PredictRequest) -> dict[str, Any]:
        try:
            x = torch.tensor(req.inputs, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise HTTPException(status_code=422, detail=f"inputs are not a batch of numbers: {e}") from None
        if tuple(x.shape[1:]) != shape or x.ndim != len(shape) + 1:
            raise HTTPException(status_code=422, detail=f"inputs of shape {tuple(x.shape)}, want (B, {shape})")
        b = int(x.shape[0])
        if req.request_ids is not None and len(req.request_ids) != b:
            raise HTTPException(status_code=422, detail=f"{len(req.request_ids)} request ids for {b} samples")
        preds = np.zeros(b, dtype=np.int64)
        exits: list[int | None] = [None] * b
        with one_at_a_time, torch.inference_mode():
            on_canary = rng.random(b) < canary
            if on_canary.any():
                rows = np.flatnonzero(on_canary)
                ids = None if req.request_ids is None else [req.request_ids[i] for i in rows]
                e, p = runner(x[torch.from_numpy(rows)], request_ids=ids)
                preds[rows] = p.cpu().numpy()
                for i, exit_ in zip(rows, e.tolist(), strict=True):
                    exits[int(i)] = int(exit_)
            if (~on_canary).any():
                rows = np.flatnonzero(~on_canary)
                preds[rows] = runner.full_model(x[torch.from_numpy(rows)])[-1].argmax(dim=1).cpu().numpy()
        return {
            "predictions": preds.tolist(),
            "exits": exits,
            "path": ["early_exit" if c else "plain" for c in on_canary.tolist()],
        }

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve a package on 127.0.0.1 (prints ``serving on http://HOST:PORT`` once listening)."""
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True, help="a 'dyncal export' package")
    ap.add_argument("--telemetry", type=Path, required=True, help="folder for the telemetry")
    ap.add_argument("--canary", type=float, default=0.05, help="share of requests on early exit")
    ap.add_argument("--shadow", type=float, default=0.02, help="share of early-exit requests also run plain")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: any free port")
    ap.add_argument("--seed", type=int, default=None, help="seed of the canary draws")
    args = ap.parse_args(argv)
    try:
        app = create_app(args.package, args.telemetry, canary=args.canary, shadow=args.shadow, seed=args.seed)
    except DyncalError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # listening before the line below: a client that reads it waits in the backlog, never refused
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"serving on http://{host}:{port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
