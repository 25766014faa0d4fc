#!/usr/bin/env bash
# The demo's numbers, saved so that "byte-identical before and after" (issue 16) is a diff.
#
#   demo_fingerprint.sh OUT [REPO]        then: diff -r OUT_BEFORE OUT_AFTER
#
# REPO is the checkout whose dyncal runs (default: this script's checkout); the
# interpreter is $PYTHON (default: REPO/.venv/bin/python). Nothing is written outside
# OUT (the runs live in OUT/work, which is removed at the end unless KEEP_WORK=1).
#
# Two pipelines, both with fixed seeds (dyncal's own: split seed 0, verify order seed, ...),
# one CPU thread and a fixed SOURCE_DATE_EPOCH:
#
#   A/  `dyncal demo` itself (collect, profile cpu b1+b32, solve 0.5x, frontier, verify,
#       report), plus `dyncal report --json` with the demo's own report options. Everything
#       that comes from a clock is removed (list below); what is left must not change.
#   B/  the same model and data through the single verbs with `profile --macs-only`, so no
#       number depends on a clock: info, solve (three variants, one in risk mode), frontier
#       and report (MACs speed-up criterion, so the decision is deterministic too) are kept
#       whole (only paths normalised, and run.json's date/command/versions left out), and
#       so are the verbs' printed summaries and --help texts (COLUMNS=120), the text of the MACs-only
#       report PDFs (pypdf; the provenance page's date and collect time left out).
#
# Removed from A as timing-dependent: frontier.csv columns ms:*; in thresholds.json
# expected_ms, holdout.expected_ms, static[].ms, and a budget/unit that is a latency column
# (not the case for the demo's 0.5x); in the report JSON decision, the speed-up criterion,
# speedup[<latency key>], full_model_ms, latency, verify.seconds-like fields, size_bytes
# (the PDF draws measured ms), notes; in verify.json every timing (only agreement, exit
# shares and accuracies are kept).
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUT [REPO]" >&2
  exit 2
fi
OUT=$(realpath -m "$1")
REPO=$(realpath "${2:-$(dirname "$0")/..}")
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -d "$REPO/dyncal" ] || { echo "error: $REPO has no dyncal/ package" >&2; exit 2; }
[ -e "$OUT" ] && { echo "error: $OUT exists; give a new folder" >&2; exit 2; }
mkdir -p "$OUT/A" "$OUT/B" "$OUT/work"
WORK="$OUT/work"

export PYTHONPATH="$REPO" SOURCE_DATE_EPOCH=1700000000 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
dyncal() { "$PY" -m dyncal "$@"; }

# ------------------------------------------------------------------ A: dyncal demo
dyncal demo --out "$WORK/demo" >"$WORK/demo.txt" 2>"$WORK/demo.err"
D="$WORK/demo"
dyncal report "$D/run" --thresholds "$D/thresholds.json" --verify "$D/verify.json" \
  --max-drop 0.01 --min-speedup 2.0 --device cpu --batch-size 1 --out "$WORK/report_demo.pdf" --json \
  >"$WORK/report_demo.json" 2>/dev/null

# ------------------------------------------------------------------ B: single verbs, MACs only
WEIGHTS=$("$PY" -c 'import dyncal.demo as d; print(d.WEIGHTS)')
R="$WORK/macs/run"
mkdir -p "$WORK/macs"
dyncal collect --model dyncal.demo:DigitsExitNet --weights "$WEIGHTS" --data dyncal.demo:validation \
  --out "$R" --batch-size 128 --quiet 2>/dev/null
dyncal profile "$R" --macs-only --json >"$WORK/macs/profile.json" 2>/dev/null
dyncal info "$R" --json >"$WORK/macs/info.json"
dyncal solve "$R" --budget 0.5x --out "$WORK/macs/t_default.json" --json >/dev/null 2>&1
dyncal solve "$R" --budget 0.3x --method optimal --score entropy --temperature --holdout 0.3 --seed 3 \
  --out "$WORK/macs/t_optimal.json" --json >/dev/null 2>&1
dyncal solve "$R" --max-drop 0.05 --delta 0.1 --out "$WORK/macs/t_risk.json" --json >/dev/null 2>&1
dyncal frontier "$R" --out "$WORK/macs/frontier.csv" >/dev/null 2>&1
dyncal report "$R" --thresholds "$WORK/macs/t_default.json" --max-drop 0.01 --min-speedup 2.0 \
  --out "$WORK/macs/report_t.pdf" --json >"$WORK/macs/report_thresholds.json" 2>/dev/null
dyncal report "$R" --min-accuracy 0.9 --min-speedup 1.5 --out "$WORK/macs/report_chosen.pdf" --json \
  >"$WORK/macs/report_chosen.json" 2>/dev/null
# what people read: the verbs' printed summaries (CLI rendering) on the same timing-free run
export COLUMNS=120
C="$WORK/macs/cli"
mkdir -p "$C"
dyncal info "$R" >"$C/info.txt" 2>&1
dyncal solve "$R" --budget 0.5x --out "$C/t.json" >"$C/solve.txt" 2>&1
dyncal solve "$R" --max-drop 0.05 --delta 0.1 --out "$C/t_risk.json" >"$C/solve_risk.txt" 2>&1
dyncal frontier "$R" --out "$C/f.csv" >"$C/frontier.txt" 2>&1
dyncal report "$R" --thresholds "$C/t.json" --max-drop 0.01 --min-speedup 2.0 --out "$C/r.pdf" \
  >"$C/report.txt" 2>&1
dyncal report "$R" --min-accuracy 0.99 --out "$C/r2.pdf" >"$C/report_nogo.txt" 2>&1
dyncal profile "$R" --macs-only >"$C/profile.txt" 2>&1
for verb in collect import info profile solve frontier verify export demo report plot; do
  dyncal "$verb" --help >"$C/help_$verb.txt" 2>&1
done

# ------------------------------------------------------------------ normalise and keep
"$PY" - "$WORK" "$OUT" "$REPO" <<'PYEOF'
import csv, io, json, re, sys
from pathlib import Path

work, out, repo = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])


def norm(text: str) -> str:
    """Paths of this invocation replaced by placeholders (before/after use different folders)."""
    return text.replace(str(work), "<WORK>").replace(str(repo), "<REPO>")


def dump(doc, path: Path) -> None:
    path.write_text(norm(json.dumps(doc, indent=2, allow_nan=True)) + "\n")


def csv_without(src: Path, dst: Path, drop) -> None:
    rows = list(csv.reader(io.StringIO(src.read_text())))
    keep = [i for i, name in enumerate(rows[0]) if not drop(name)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([r[i] for i in keep])
    dst.write_text(norm(buf.getvalue()))


def untimed_thresholds(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("expected_ms", None)
    if isinstance(doc.get("holdout"), dict):
        doc["holdout"] = {k: v for k, v in doc["holdout"].items() if k != "expected_ms"}
    doc["static"] = [{k: v for k, v in s.items() if k != "ms"} for s in doc.get("static") or []]
    unit = str((doc.get("budget") or {}).get("unit") or "")
    if unit.startswith("ms:"):  # a latency budget: every number of the document is timing-bound
        doc = {"budget_unit": unit, "note": "latency budget: timing-dependent, not kept"}
    return doc


def untimed_report(doc: dict) -> dict:
    keep = {}
    keep["pages"] = doc["pages"]
    keep["budget"] = doc["budget"]
    keep["budget_reason"] = doc["budget_reason"]
    keep["decision_provisional"] = doc["decision_provisional"]
    keep["criteria"] = [c for c in doc["criteria"] if c["name"] != "speedup" or c.get("cost") == "macs"]
    keep["operating_point"] = untimed_thresholds(doc["operating_point"])
    keep["held_out"] = doc["held_out"]
    keep["speedup"] = {k: v for k, v in doc["speedup"].items() if k == "macs"}
    if all(c["name"] != "speedup" or c.get("cost") == "macs" for c in doc["criteria"]):
        keep["decision"] = doc["decision"]  # no latency criterion: the decision is timing-free
    return keep


A, B = out / "A", out / "B"
demo = work / "demo"
csv_without(demo / "frontier.csv", A / "frontier.csv", lambda c: c.startswith("ms:"))
dump(untimed_thresholds(json.loads((demo / "thresholds.json").read_text())), A / "thresholds.json")
dump(untimed_report(json.loads((work / "report_demo.json").read_text())), A / "report.json")
v = json.loads((demo / "verify.json").read_text())
dump({k: v[k] for k in ("n", "agreement", "exit_agreement", "runtime_accuracy", "simulated_accuracy",
                        "runtime_exit_shares", "simulated_exit_shares") if k in v}, A / "verify_agreement.json")
lines = (work / "demo.txt").read_text().splitlines()
(A / "demo_summary.txt").write_text(norm("\n".join(
    l for l in lines if "held-out accuracy" in l or "held out:" in l or "agreement" in l) + "\n"))

m = work / "macs"
(B / "frontier.csv").write_text(norm((m / "frontier.csv").read_text()))
for name in ("t_default", "t_optimal", "t_risk"):
    (B / f"{name}.json").write_text(norm((m / f"{name}.json").read_text()))
for name in ("report_thresholds", "report_chosen"):
    doc = json.loads((m / f"{name}.json").read_text())
    doc.pop("size_bytes", None)  # PDF bytes: matplotlib/pypdf versions, not dyncal's numbers
    dump(doc, B / f"{name}.json")
info = json.loads((m / "info.json").read_text())
prov = info.pop("provenance", {})
info["provenance"] = {k: prov.get(k) for k in ("model", "weights_sha256", "data", "device")}
dump(info, B / "info.json")
prof = json.loads((m / "profile.json").read_text())
dump({k: prof[k] for k in ("k", "graph_macs", "model_macs", "exits", "unsupported_ops", "stages", "can_drop_rows")},
     B / "profile_macs.json")
for txt in sorted((m / "cli").glob("*.txt")):
    # the report's size in KB is the PDF's (matplotlib/pypdf), not dyncal's numbers
    lines = [l if not l.startswith("wrote ") or " KB)" not in l else l.split(" (")[0] + " (...)"
             for l in txt.read_text().splitlines()]
    (B / f"cli_{txt.name}").write_text(norm("\n".join(lines) + "\n"))
try:
    from pypdf import PdfReader
except ImportError:  # the test extra is not installed: page text is not compared
    PdfReader = None
for name in ("report_t", "report_chosen"):
    if PdfReader is None:
        break
    text = "\n".join(page.extract_text() for page in PdfReader(m / f"{name}.pdf").pages)
    # the provenance page shows when and how fast the run was collected: not the report's numbers
    lines = ["created <DATE>" if l.startswith("created ") else l for l in text.splitlines()]
    lines = [re.sub(r"collect_seconds=[0-9.]+", "collect_seconds=<S>", l) for l in lines]
    (B / f"{name}_pages.txt").write_text(norm("\n".join(lines) + "\n"))
run_doc = json.loads((m / "run" / "run.json").read_text())
dump({"n": run_doc["n"], "k": run_doc["k"], "c": run_doc["c"], "fingerprint": run_doc.get("fingerprint"),
      "macs": (run_doc.get("costs") or {}).get("macs")}, B / "run_identity.json")
PYEOF

[ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
echo "wrote $OUT (A: dyncal demo without timing; B: MACs-only verbs, whole)" >&2
