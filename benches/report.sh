#!/usr/bin/env bash
# Runs both benchmarks (benches/overhead.rs, benches/load.rs), counts allocations per request
# under valgrind, and prints a markdown table of the figures and of the ratios against the
# performance targets in the README. Also written to target/bench-report/report.md.
#
# Usage: benches/report.sh            (from anywhere in the repository)
# Needs: cargo, python3; valgrind for the allocation counts (skipped without it).
# Extra arguments go to criterion, e.g. `benches/report.sh --measurement-time 3`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
report_dir="$target_dir/bench-report"
rm -rf "$report_dir" "$target_dir/criterion/tower_hot_path" "$target_dir/criterion/reqwest_hot_path" \
    "$target_dir/criterion/tower_scaling" "$target_dir/criterion/reqwest_scaling"
mkdir -p "$report_dir"

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CLIENT_AUTH_BENCH_REPORT="$report_dir" \
    cargo bench -p client-auth-benches --bench overhead --bench load -- "$@" \
    2>&1 | tee "$report_dir/cargo-bench.log" >&2

# Allocations and instructions per request, counted by valgrind (memcheck, callgrind) for 0 and
# N requests of one variant on one thread (after 16 warm-up requests): difference divided by N.
# Instruction counts do not depend on what else runs on the machine; times do.
overhead_bin=$(cargo bench -p client-auth-benches --bench overhead --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "overhead" and m.get("executable"):
        print(m["executable"])')
if command -v valgrind >/dev/null; then
    n=500
    for variant in A_none B_tower_http C_static D_oauth_no_retry E_oauth_retry A_plus_clone \
        none fixed_header ours_static ours_oauth; do
        allocs=()
        instructions=()
        for requests in 0 "$n"; do
            allocs+=("$(CLIENT_AUTH_BENCH_ALLOCS="$variant:$requests" \
                valgrind --tool=memcheck --leak-check=no "$overhead_bin" 2>&1 |
                sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p' | tr -d ,)")
            instructions+=("$(CLIENT_AUTH_BENCH_ALLOCS="$variant:$requests" \
                valgrind --tool=callgrind --callgrind-out-file=/dev/null "$overhead_bin" 2>&1 |
                sed -n 's/.*Collected : \([0-9]*\).*/\1/p')")
        done
        echo "{\"variant\": \"$variant\", \"n\": $n, \"allocs\": [${allocs[0]}, ${allocs[1]}], \"instructions\": [${instructions[0]}, ${instructions[1]}]}" \
            >>"$report_dir/valgrind.jsonl"
    done
else
    echo "valgrind not found: allocation and instruction counts skipped" >&2
fi

python3 - "$target_dir/criterion" "$report_dir" "$started" <<'PY' | tee "$report_dir/report.md"
import json, os, sys

criterion, report, started = sys.argv[1:4]

def ns(group, *path):
    f = os.path.join(criterion, group, *map(str, path), "new", "estimates.json")
    with open(f) as fh:
        return json.load(fh)["median"]["point_estimate"]

def jsonl(name):
    f = os.path.join(report, name)
    if not os.path.exists(f):
        return []
    with open(f) as fh:
        return [json.loads(l) for l in fh if l.strip()]

vg = jsonl("valgrind.jsonl")
allocs = {a["variant"]: (a["allocs"][1] - a["allocs"][0]) / a["n"] for a in vg}
instr = {a["variant"]: (a["instructions"][1] - a["instructions"][0]) / a["n"] for a in vg}
load = {r["item"]: r for r in jsonl("load.jsonl")}

def fa(v):
    a = allocs.get(v)
    return "n/a" if a is None else (f"{a:.0f}" if abs(a - round(a)) < 0.01 else f"{a:.2f}")

def fi(v):
    i = instr.get(v)
    return "n/a" if i is None else f"{i:.0f}"

def ok(met):
    return "met" if met else "**not met**"

def okr(x, limit):
    return "n/a" if x != x else ok(x <= limit)

out = []
p = out.append
p(f"Measured {started} on this machine: `benches/report.sh` (runs `cargo bench -p client-auth-benches "
  f"--bench overhead --bench load`, then the overhead bench's variants under valgrind). Times are "
  f"criterion medians; the overhead is the time minus the no-layer baseline measured in the same "
  f"run. Instructions (callgrind) and allocations (memcheck) per request are the difference "
  f"between 500 requests and none, on one thread: they do not move with the machine's load.")
p("")

# 1 + 2: tower
T = ["A_none", "B_tower_http", "C_static", "D_oauth_no_retry", "E_oauth_retry", "A_plus_clone"]
label = {
    "A_none": "A no layer", "B_tower_http": "B tower-http `AddAuthorization`",
    "C_static": "C ours, static key", "D_oauth_no_retry": "D ours, OAuth, retry off",
    "E_oauth_retry": "E ours, OAuth, retry armed", "A_plus_clone": "A + one request clone",
    "none": "no middleware", "fixed_header": "fixed-header middleware",
    "ours_static": "ours, static key", "ours_oauth": "ours, OAuth (retry armed)",
}
t = {v: ns("tower_hot_path", v) for v in T}
a = t["A_none"]
p("### Tower hot path (one request into a no-op `service_fn`, one thread)")
p("")
p("| variant | ns/request | overhead over A (ns) | instructions/request | allocations/request |")
p("|---|---:|---:|---:|---:|")
for v in T:
    p(f"| {label[v]} | {t[v]:.1f} | {t[v] - a:+.1f} | {fi(v)} | {fa(v)} |")
p("")

R = ["none", "fixed_header", "ours_static", "ours_oauth"]
r = {v: ns("reqwest_hot_path", v) for v in R}
p("### reqwest hot path (reqwest-middleware, canned last middleware, no socket, one thread)")
p("")
p("| variant | ns/request | overhead over none (ns) | instructions/request | allocations/request |")
p("|---|---:|---:|---:|---:|")
for v in R:
    p(f"| {label[v]} | {r[v]:.1f} | {r[v] - r['none']:+.1f} | {fi(v)} | {fa(v)} |")
p("")

# 7: scaling
def scaling(group, variants, base):
    p("| variant | " + " | ".join(f"{n} task{'s' if n > 1 else ''}" for n in (1, 2, 16)) + " |")
    p("|---|---:|---:|---:|")
    s = {(v, n): ns(group, v, n) for v in variants for n in (1, 2, 16)}
    for v in variants:
        p(f"| {label[v]} | " + " | ".join(
            f"{s[v, n]:.1f} ({s[v, n] - s[base, n]:+.1f})" for n in (1, 2, 16)) + " |")
    p("")
    return s

p("### Scaling (2-worker tokio runtime; wall time per request in ns, overhead over no layer in brackets)")
p("")
p("tower:")
p("")
ts = scaling("tower_scaling", T, "A_none")
p("reqwest:")
p("")
rs = scaling("reqwest_scaling", R, "none")

# Targets
rows = []
def ratio(x, y):
    # A negative or zero overhead is below the noise of the run: no ratio.
    return x / y if x > 0 and y > 0 else float("nan")

def fr(x):
    return "n/a (an overhead ≤ 0: noise)" if x != x else f"{x:.2f}×"

def tower_targets(get, where):
    A, B, C, D, E, K = (get(v) for v in T)
    clone = K - A
    c = ratio(C - A, B - A); d = ratio(D - A, B - A); e = ratio(E - D, clone)
    rows.append((f"1 tower (C−A) ≤ 1.25×(B−A) {where}", fr(c), okr(c, 1.25)))
    rows.append((f"1 tower (D−A) ≤ 1.5×(B−A) {where}", fr(d), okr(d, 1.5)))
    rows.append((f"1 tower (E−D) ≤ 1.2×clone {where}", f"{fr(e)} (clone {clone:.0f})", okr(e, 1.2)))

def reqwest_targets(get, where):
    n, f, s, o = (get(v) for v in R)
    x = ratio(s - n, f - n); y = ratio(o - n, f - n)
    rows.append((f"3 reqwest static: overhead ≤ 1.5× fixed-header's {where}", fr(x), okr(x, 1.5)))
    rows.append((f"3 reqwest OAuth (retry armed): overhead ≤ 1.5× fixed-header's {where}", fr(y), okr(y, 1.5)))

tower_targets(lambda v: t[v], "(time, one thread)")
if instr:
    tower_targets(lambda v: instr[v], "(instructions, one thread)")
for n in (1, 2, 16):
    tower_targets(lambda v: ts[v, n], f"(7: time, {n} task{'s' if n > 1 else ''})")
reqwest_targets(lambda v: r[v], "(time, one thread)")
if instr:
    reqwest_targets(lambda v: instr[v], "(instructions, one thread)")
for n in (1, 2, 16):
    reqwest_targets(lambda v: rs[v, n], f"(7: time, {n} task{'s' if n > 1 else ''})")

if allocs:
    A, B, C, D, E, K = (allocs[v] for v in T)
    rows.append(("2 allocations: C = B", f"C {C:g}, B {B:g}", ok(C == B)))
    rows.append(("2 allocations: D adds none (D = C)", f"D {D:g}, C {C:g}", ok(D == C)))
    snap = (K - A) + 1
    rows.append(("2 allocations: E adds only the snapshot's (a request copy + its `Box`)",
                 f"E−D = {E - D:g}; copy {K - A:g} + box 1 = {snap:g}", ok(E - D == snap)))

if "stampede" in load:
    s = load["stampede"]
    lim = s["token_rtt_ms"] + 5
    rows.append((f"4 stampede ({s['callers']} callers): token-endpoint calls = 1", str(s["token_calls"]), ok(s["token_calls"] == 1)))
    rows.append(("4 stampede: p99 ≤ token RTT + 5 ms",
                 f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms; limit {s['token_rtt_ms']:.1f} + 5 = {lim:.1f} ms",
                 ok(s["p99_ms"] <= lim)))
    rows.append(("4 stampede: wake-up baseline (same callers, one `watch` filled after one token RTT, no auth)",
                 f"p50 {s['baseline_p50_ms']:.1f} ms, p99 {s['baseline_p99_ms']:.1f} ms; ours − baseline at p99 = {s['p99_ms'] - s['baseline_p99_ms']:+.1f} ms",
                 ok(s["p99_ms"] <= s["baseline_p99_ms"] + 5) + " (≤ baseline + 5 ms)"))
if "storm" in load:
    s = load["storm"]
    lim = s["token_rtt_ms"] + s["resource_rtt_ms"] + 5
    rows.append((f"5 401 storm ({s['callers']} requests, {s['got_401']} got a 401): refreshes = 1", str(s["refreshes"]), ok(s["refreshes"] == 1)))
    rows.append(("5 401 storm: p99 (401 → retried response) ≤ token RTT + resource RTT + 5 ms",
                 f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms; limit {s['token_rtt_ms']:.1f} + {s['resource_rtt_ms']:.1f} + 5 = {lim:.1f} ms",
                 ok(s["p99_ms"] <= lim)))
if "refresh_ahead" in load:
    s = load["refresh_ahead"]
    rows.append((f"6 refresh-ahead ({s['simulated_s']} simulated s, {s['lifetime_s']} s tokens, {s['requests']} requests): requests that waited = 0",
                 f"{s['waited']} waited; {s['refreshes']} refreshes", ok(s["waited"] == 0)))

p("### Targets")
p("")
p("| target | measured | |")
p("|---|---|---|")
for row in rows:
    p("| " + " | ".join(row) + " |")
print("\n".join(out))
PY
