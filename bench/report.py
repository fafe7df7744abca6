#!/usr/bin/env python3
"""bench/report.py RESULTS.csv SUMMARY.md PLOT.svg [HIST_DIR]: medians, ratios and a plot from bench/run.sh's CSV.

p99 is taken over every repetition's round trips pooled (HIST_DIR/<conns>x<size>-<kind>.<server>.txt, the
`load --hist` files), when they exist: one stall of the shared machine in one repetition then weighs as much as
its share of the samples, rather than deciding a median of three p99s. Without them, the median of the reps' p99."""
import csv, os, statistics, sys, collections

rows = list(csv.DictReader(open(sys.argv[1])))
cells = collections.defaultdict(list)
for r in rows:
    cells[(r["scenario"], r["server"])].append(r)
scen_order = list(dict.fromkeys(r["scenario"] for r in rows))

hist_dir = sys.argv[4] if len(sys.argv) > 4 else None

def pooled(sc, server, q):
    """Quantile q of the round trips of every repetition of a cell, or None without its histogram file."""
    conns, _, size, kind = sc.split()
    path = os.path.join(hist_dir or "", f"{conns}x{size}-{kind}.{server}.txt")
    if not hist_dir or not os.path.exists(path):
        return None
    counts = collections.Counter()
    for line in open(path):
        us, n = line.split()
        counts[int(us)] += int(n)
    total, seen = sum(counts.values()), 0
    for us in sorted(counts):
        seen += counts[us]
        if seen >= q * total:
            return us
    return None

def med(rs, key):
    v = [float(r[key]) for r in rs if r.get(key) not in ("", None)]
    return statistics.median(v) if v else None

out = []
out.append("| scenario | server | msgs/s | vs raw mio | vs best Rust peer | server CPU µs/msg | of it user space | p99 µs (all reps) | wire bytes / payload |")
out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
plot = []
for sc in scen_order:
    if sc.startswith(("syscalls", "idle")):
        continue
    names = [s for (c, s) in cells if c == sc]
    rate = {s: med(cells[(sc, s)], "msgs_per_s") for s in names}
    raw = rate.get("raw-mio")
    # Peers of the same kind: with deflate, the peers that negotiated it; over wss, the wss peers.
    kind = sc.split()[-1]
    same = [s for s in names if not s.startswith(("wskit", "raw"))]
    if kind == "deflate":
        same = [s for s in same if s.endswith("-deflate")]
    # Ratios are paired: within one repetition the servers of a scenario run back to back, seconds apart, so a
    # ratio taken there compares them under the same conditions; the table gives the median over repetitions.
    # (The ratio of two medians mixes repetitions: on a shared machine a slow spell that hits one server in one
    # repetition and another in the next then decides it.)
    by_rep = collections.defaultdict(dict)
    for s in names:
        for r in cells[(sc, s)]:
            if r["msgs_per_s"]:
                by_rep[r["rep"]][s] = float(r["msgs_per_s"])

    def paired(s, against):
        v = [run[s] / d for run in by_rep.values() if s in run and (d := against(run))]
        return statistics.median(v) if v else None

    # Against the best peer: wskit's paired ratio to each peer of the kind, and the lowest of them, with its peer.
    # (Taken to whichever peer was fastest in each repetition, the ratio compared wskit with the luckiest of four
    # noisy samples: on a noisy night the fastest peer itself scored 0.84x against that.)
    def to_best(s):
        ratios = [(r, p) for p in same if (r := paired(s, lambda run, p=p: run.get(p)))]
        return min(ratios, default=(None, None))

    for s in names:
        rs = cells[(sc, s)]
        r, cpu, wire = rate[s], med(rs, "cpu_us_per_msg"), med(rs, "wire_ratio")
        p99 = pooled(sc, s, 0.99) or med(rs, "p99_us")
        to_raw = paired(s, lambda run: run.get("raw-mio")) if raw else None
        to_peer, best = to_best(s) if s.startswith("wskit") else (None, None)
        vs_raw = f"{to_raw:.2f}×" if to_raw else "—"
        vs_peer = f"{to_peer:.2f}× {best}" if to_peer else "—"
        user = med(rs, "user_us_per_msg")
        user = f"{user:.2f}" if user is not None else "—"
        out.append(f"| {sc} | {s} | {r:,.0f} | {vs_raw} | {vs_peer} | {cpu:.2f} | {user} | {p99:,.0f} | {wire:.3f} |")
        plot.append((sc, s, to_raw, cpu))
out.append("")
out.append("| server | syscalls per echoed message (100 × 20 B) | bytes per idle connection (all) | each past the first half | new client's echo p99 while they are held (µs) |")
out.append("|---|---:|---:|---:|---:|")
idle_sc = next((c for c in scen_order if c.startswith("idle")), None)
sys_sc = next((c for c in scen_order if c.startswith("syscalls")), None)
for s in dict.fromkeys(r["server"] for r in rows if r["scenario"] in (idle_sc, sys_sc)):
    sysc = med(cells.get((sys_sc, s), []), "syscalls_per_msg")
    idle = med(cells.get((idle_sc, s), []), "bytes_per_idle")
    each = med(cells.get((idle_sc, s), []), "bytes_per_idle_marginal")
    p99 = med(cells.get((idle_sc, s), []), "p99_us")
    f = lambda v, fmt: (fmt.format(v) if v is not None else "—")
    out.append(f"| {s} | {f(sysc, '{:.2f}')} | {f(idle, '{:,.0f}')} | {f(each, '{:,.0f}')} | {f(p99, '{:,.0f}')} |")
if idle_sc:
    out.append(f"\n({idle_sc.split()[1]} connections held idle.)")
open(sys.argv[2], "w").write("\n".join(out) + "\n")

# The plot: per plain scenario, msgs/s as a ratio of the raw echo (left) and CPU µs per message (right).
plain = [p for p in plot if p[2] is not None]
scens = list(dict.fromkeys(p[0] for p in plain))
servers = list(dict.fromkeys(p[1] for p in plain))
colors = ["#888888", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
bar, gap, left, width = 12, 14, 150, 300
h = 40 + len(scens) * (len(servers) * bar + gap) + 40
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + 2 * width + 120}" height="{h}" font-family="sans-serif" font-size="11">']
svg.append(f'<text x="{left}" y="16" font-weight="bold">msgs/s ÷ raw mio echo</text>')
svg.append(f'<text x="{left + width + 60}" y="16" font-weight="bold">server CPU µs per message</text>')
svg.append(f'<text x="{left}" y="{h - 30}" font-size="9">(bars scaled within each scenario)</text>')
y = 30
for sc in scens:
    # Bars are scaled within each scenario (the 1 MiB scenario's CPU is 50× the others'); labels give the values.
    max_ratio = max(p[2] for p in plain if p[0] == sc) * 1.15
    max_cpu = max(p[3] for p in plain if p[0] == sc) * 1.15
    svg.append(f'<text x="4" y="{y + len(servers) * bar / 2 + 4}">{sc.replace(" plain", "")} B</text>')
    for i, s in enumerate(servers):
        p = next((p for p in plain if p[0] == sc and p[1] == s), None)
        if p:
            c = colors[i % len(colors)]
            w1, w2 = p[2] / max_ratio * width, p[3] / max_cpu * width
            svg.append(f'<rect x="{left}" y="{y}" width="{w1:.1f}" height="{bar - 2}" fill="{c}"/>')
            svg.append(f'<text x="{left + w1 + 3:.1f}" y="{y + bar - 3}" font-size="9">{p[2]:.2f}</text>')
            x2 = left + width + 60
            svg.append(f'<rect x="{x2}" y="{y}" width="{w2:.1f}" height="{bar - 2}" fill="{c}"/>')
            svg.append(f'<text x="{x2 + w2 + 3:.1f}" y="{y + bar - 3}" font-size="9">{p[3]:.2f}</text>')
        y += bar
    y += gap
for i, s in enumerate(servers):
    x = left + i * 110
    svg.append(f'<rect x="{x}" y="{h - 22}" width="10" height="10" fill="{colors[i % len(colors)]}"/>')
    svg.append(f'<text x="{x + 14}" y="{h - 13}">{s}</text>')
svg.append("</svg>")
open(sys.argv[3], "w").write("\n".join(svg) + "\n")
