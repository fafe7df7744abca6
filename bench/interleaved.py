"""Reads what `interleave` (bench/servers.sh) appends, one line per cell: `CONNS x SIZE,NAME,ROUND,` then load's
`key=value` line with `,cpu_ticks=N`, and prints a markdown table of per-cell medians over the rounds."""
import collections
import re
import statistics


def read(path):
    """{scenario: {server: [each round's fields as numbers]}}, in the order first met."""
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(path):
        scenario, name, _round, rest = line.strip().split(",", 3)
        cells[scenario][name].append({k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", rest)})
    return cells


def medians(values):
    """The median of each component of `values` (numbers, or tuples of them)."""
    rows = [v if isinstance(v, tuple) else (v,) for v in values]
    return [statistics.median(row[i] for row in rows) for i in range(len(rows[0]))]


def table(path, base, ratio_title, columns):
    """msgs/s, its ratio to server `base` (medians), then `columns`: (title, format, fn of a round's fields giving
    one value or a tuple of them), each value the median over the rounds."""
    print("| scenario | server | msgs/s | " + ratio_title + " | " + " | ".join(t for t, _, _ in columns) + " |")
    print("|" + "---|" * (4 + len(columns)))
    for scenario, by in read(path).items():
        base_rate = statistics.median(r["msgs_per_s"] for r in by[base])
        for name, rounds in by.items():
            rate = statistics.median(r["msgs_per_s"] for r in rounds)
            cells = [fmt.format(*medians([fn(r) for r in rounds])) for _, fmt, fn in columns]
            print(f"| {scenario} | {name} | {rate:,.0f} | {rate / base_rate:.2f} | " + " | ".join(cells) + " |")
