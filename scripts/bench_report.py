#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: parse iperf3 and ping output, and turn the raw
measurements into the markdown tables and the JSON file.

  bench_report.py tcp FILE          iperf3 -J of a TCP test: "MBIT_S BYTES" (receiver side)
  bench_report.py udp FILE          iperf3 -J of a UDP test: "SENT_PPS RECV_PPS LOST_PCT"
  bench_report.py ping FILE         ping output: "AVG_MS P99_MS SAMPLES LOSS_PCT"
  bench_report.py report RAW META OUT_JSON
                                    RAW: one JSON object per line, either
                                      {"run", "system", "hops", "figure", "value"} or
                                      {"note": "..."};
                                    META: a JSON object copied into the output.
                                    Prints the markdown; writes OUT_JSON.

Only the standard library: the bench runs on a bare Debian with python3.
"""

import json
import math
import sys

# ---------------------------------------------------------------------------------
# Parsing


def fail(msg):
    print("ERR " + " ".join(msg.split()))
    sys.exit(0)


def load_iperf(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        fail(f"cannot read {path}: {e}")
    try:
        doc = json.loads(text)
    except ValueError:
        fail(f"iperf3 wrote no JSON ({text.strip()[:120]!r})")
    if doc.get("error"):
        fail(f"iperf3: {doc['error']}")
    return doc


def cmd_tcp(path):
    end = load_iperf(path).get("end", {})
    rx = end.get("sum_received") or {}
    if not rx.get("seconds"):
        fail("iperf3 JSON has no end.sum_received")
    print(f"{rx['bits_per_second'] / 1e6:.3f} {int(rx['bytes'])}")


def cmd_udp(path):
    doc = load_iperf(path)
    end = doc.get("end", {})
    # iperf3 >= 3.13 has sum_sent/sum_received for UDP; 3.12 has one "sum" whose
    # packets/lost_packets come from the server's count.
    s = end.get("sum") or {}
    secs = s.get("seconds") or 0
    if not secs:
        fail("iperf3 JSON has no end.sum")
    sent = s.get("packets", 0)
    lost = s.get("lost_packets", 0)
    if "sum_sent" in end and "sum_received" in end:
        sent = end["sum_sent"].get("packets", sent)
        rx = end["sum_received"]
        lost = rx.get("lost_packets", lost)
        secs = rx.get("seconds") or secs
    if sent <= 0:
        fail("iperf3 sent no packets")
    lost = max(0, min(lost, sent))
    print(f"{sent / secs:.0f} {(sent - lost) / secs:.0f} {100.0 * lost / sent:.3f}")


def percentile(xs, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def cmd_ping(path):
    times = []
    sent = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "time=" in line and "bytes from" in line:
                v = line.split("time=", 1)[1].split()[0]
                try:
                    times.append(float(v))
                except ValueError:
                    pass
            elif "packets transmitted" in line:
                try:
                    sent = int(line.split()[0])
                except ValueError:
                    pass
    if not times:
        fail("no ping replies")
    sent = sent or len(times)
    loss = 100.0 * max(0, sent - len(times)) / sent
    print(f"{sum(times) / len(times):.4f} {percentile(times, 99):.4f} {len(times)} {loss:.2f}")


# ---------------------------------------------------------------------------------
# The report

SYSTEMS = [("plain", "0"), ("wireguard-go", "1"), ("wireguard-go", "3"), ("boringtun", "1"),
           ("boringtun", "3"), ("anonnet", "1"), ("anonnet", "3"), ("anonnet-vc", "3")]

UNITS = {
    "tcp1_up_mbps": "Mbit/s", "tcp1_down_mbps": "Mbit/s", "tcp4_up_mbps": "Mbit/s",
    "tcp4_down_mbps": "Mbit/s", "udp64_pps": "packets/s", "udp64_loss_pct": "%",
    "udp64_sender_limited": "0/1", "cpu_s_per_gb": "CPU s/GB",
    "rtt_base_avg_ms": "ms", "rtt_idle_avg_ms": "ms", "rtt_idle_p99_ms": "ms",
    "rtt_load_avg_ms": "ms", "rtt_load_p99_ms": "ms", "rtt_load_loss_pct": "%",
    "rtt_added_per_hop_ms": "ms", "rtt_load_added_per_hop_ms": "ms",
    "rtt_load_p99_over_idle_p99": "ratio", "rss_peak_kib_client": "KiB",
    "rss_peak_kib_gw_max": "KiB", "rss_peak_kib_sum": "KiB",
    "circuit_build_ms": "ms", "up_ready_ms": "ms",
}


def unit_of(fig):
    if fig in UNITS:
        return UNITS[fig]
    if fig.startswith("rss_peak_kib_"):
        return "KiB"
    if fig.startswith("idle_bytes_per_circuit_"):
        return "bytes"
    if fig.startswith("idle_rss_"):
        return "KiB"
    if fig.startswith("idle_build_secs_"):
        return "s"
    return ""


def stats(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    s = sorted(vals)
    n = len(s)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {"median": med, "min": s[0], "max": s[-1], "n": n, "values": vals}


# name, description, numerator (system, hops, figure), denominator: (system, hops,
# figure) or a list of them (the best one counts), op and target (None: context only).
def ratio_defs():
    defs = []
    for d in ("up", "down"):
        f = f"tcp1_{d}_mbps"
        defs += [
            (f"anonnet1_over_wggo1_tcp1_{d}", f"anonnet 1 hop / wireguard-go 1 hop, TCP 1 stream {d}",
             ("anonnet", "1", f), [("wireguard-go", "1", f)], ">=", 3.0),
            (f"anonnet1_over_boringtun1_tcp1_{d}", f"anonnet 1 hop / boringtun 1 hop, TCP 1 stream {d}",
             ("anonnet", "1", f), [("boringtun", "1", f)], ">=", 3.0),
            (f"anonnet3_over_wggo1_tcp1_{d}", f"anonnet 3 hops / wireguard-go 1 hop, TCP 1 stream {d}",
             ("anonnet", "3", f), [("wireguard-go", "1", f)], ">=", 1.5),
            (f"anonnet3_over_best_chained3_tcp1_{d}",
             f"anonnet 3 hops / faster chained 3-hop WireGuard, TCP 1 stream {d}",
             ("anonnet", "3", f), [("wireguard-go", "3", f), ("boringtun", "3", f)], ">=", 3.0),
            (f"anonnet3_over_plain_tcp1_{d}", f"anonnet 3 hops / plain path, TCP 1 stream {d}",
             ("anonnet", "3", f), [("plain", "0", f)], ">=", 0.25),
            (f"anonnetvc3_over_anonnet3_tcp1_{d}",
             f"anonnet 3 hops, 2 legs / 1 route, TCP 1 stream {d}",
             ("anonnet-vc", "3", f), [("anonnet", "3", f)], ">=", 0.9),
        ]
    defs.append(("anonnetvc3_over_anonnet3_rtt_load_p99",
                 "anonnet 3 hops, 2 legs / 1 route, ping p99 under load",
                 ("anonnet-vc", "3", "rtt_load_p99_ms"), [("anonnet", "3", "rtt_load_p99_ms")],
                 "<=", 1.0))
    for h in ("1", "3"):
        defs.append((f"anonnet{h}_rtt_per_hop_over_wggo{h}",
                     f"anonnet {h} hop(s) / wireguard-go {h} hop(s), idle RTT added per hop",
                     ("anonnet", h, "rtt_added_per_hop_ms"),
                     [("wireguard-go", h, "rtt_added_per_hop_ms")], "<=", 1.0))
    return defs


def fmt_num(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(st, scale=1.0, suffix=""):
    if not st:
        return "–"
    m = fmt_num(st["median"] * scale)
    if st["n"] > 1 and st["min"] != st["max"]:
        return f"{m}{suffix} ({fmt_num(st['min'] * scale)}–{fmt_num(st['max'] * scale)})"
    return f"{m}{suffix}"


def met(op, target, value):
    if value is None:
        return None
    return value >= target if op == ">=" else value <= target


def cmd_report(raw_path, meta_path, out_path):
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    rows, notes = [], []
    with open(raw_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            o = json.loads(line)
            if "note" in o:
                notes.append(o["note"])
            else:
                rows.append(o)

    # per[(run, system, hops, figure)] = value
    per = {}
    runs = set()
    for o in rows:
        per[(o["run"], o["system"], str(o["hops"]), o["figure"])] = o["value"]
        runs.add(o["run"])
    runs = sorted(runs)

    results = {}
    keys = sorted({(s, h, f) for (_, s, h, f) in per})
    for s, h, f in keys:
        st = stats([per.get((r, s, h, f)) for r in runs])
        if st:
            st["unit"] = unit_of(f)
            results.setdefault(s, {}).setdefault(h, {})[f] = st

    def get(s, h, f):
        return results.get(s, {}).get(h, {}).get(f)

    ratios = {}
    for name, desc, num, dens, op, target in ratio_defs():
        vals = []
        for r in runs:
            a = per.get((r,) + num)
            bs = [per.get((r,) + d) for d in dens]
            bs = [b for b in bs if b is not None]
            if a is None or not bs:
                continue
            b = max(bs) if op == ">=" else min(bs)
            # A ratio of RTT increments is meaningless when the anchor's is not
            # positive (noise on an idle veth).
            if b <= 0:
                continue
            vals.append(a / b)
        st = stats(vals)
        if st:
            st.update({"description": desc, "target": f"{op} {target:g}",
                       "met": met(op, target, st["median"])})
            ratios[name] = st

    targets = {}
    for h in ("1", "3"):
        st = get("anonnet", h, "rtt_load_p99_over_idle_p99")
        if st:
            targets[f"anonnet{h}_rtt_load_p99_over_idle_p99"] = dict(
                st, description=f"anonnet {h} hop(s): ping p99 under load / p99 idle",
                target="<= 2", met=met("<=", 2.0, st["median"]))
    for n in ("1000", "10000"):
        st = get("anonnet", "1", f"idle_bytes_per_circuit_{n}")
        if st:
            targets[f"anonnet_gw_bytes_per_idle_circuit_{n}"] = dict(
                st, description=f"gateway memory per idle circuit at {n} circuits (bytes)",
                target="<= 4096", met=met("<=", 4096.0, st["median"]))

    out = dict(meta)
    out.update({"schema": 1, "runs_done": len(runs), "results": results,
                "ratios": ratios, "targets": targets, "notes": notes})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")

    # ------------------------------------------------------------------ markdown
    p = print
    p(f"## anonnet bench ({meta.get('mode', '?')}, {len(runs)} run(s), {meta.get('date', '')})")
    p()
    p(f"Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, kernel "
      f"{meta.get('kernel', '?')}; anonnet {meta.get('anonnet_commit', '?')}, "
      f"{meta.get('wireguard_go_version', '?')}, {meta.get('boringtun_version', '?')}, "
      f"{meta.get('iperf3_version', '?')}.")
    p("Cells: median (min–max) over the runs. Path: client → r1 → r2 → r3 → server over veth.")
    p()
    present = [(s, h) for (s, h) in SYSTEMS if s in results and h in results[s]]
    label = {"0": "–"}

    p("### Throughput")
    p()
    p("| system | hops | TCP 1 up | TCP 1 down | TCP 4 up | TCP 4 down | UDP 64 B (kpps, <1% loss) | CPU s/GB |")
    p("|---|---|---|---|---|---|---|---|")
    for s, h in present:
        udp = cell(get(s, h, "udp64_pps"), 1e-3)
        lim = get(s, h, "udp64_sender_limited")
        if lim and lim["max"] > 0:
            udp += " *"
        p(f"| {s} | {label.get(h, h)} | {cell(get(s, h, 'tcp1_up_mbps'))} | "
          f"{cell(get(s, h, 'tcp1_down_mbps'))} | {cell(get(s, h, 'tcp4_up_mbps'))} | "
          f"{cell(get(s, h, 'tcp4_down_mbps'))} | {udp} | {cell(get(s, h, 'cpu_s_per_gb'))} |")
    p()
    p("TCP in Mbit/s (iperf3, receiver side; down = -R). CPU s/GB: whole machine, "
      "/proc/stat during TCP 1 up. `*`: iperf3 could not offer more (sender-limited).")
    p()
    p("### Latency and memory")
    p()
    p("| system | hops | RTT idle avg / p99 | RTT loaded avg / p99 | added per hop (idle) | "
      "p99 loaded / idle | peak RSS client | peak RSS gateway (max) |")
    p("|---|---|---|---|---|---|---|---|")
    for s, h in present:
        p(f"| {s} | {label.get(h, h)} | {cell(get(s, h, 'rtt_idle_avg_ms'))} / "
          f"{cell(get(s, h, 'rtt_idle_p99_ms'))} | {cell(get(s, h, 'rtt_load_avg_ms'))} / "
          f"{cell(get(s, h, 'rtt_load_p99_ms'))} | {cell(get(s, h, 'rtt_added_per_hop_ms'))} | "
          f"{cell(get(s, h, 'rtt_load_p99_over_idle_p99'))} | "
          f"{cell(get(s, h, 'rss_peak_kib_client'), 1 / 1024, ' MiB')} | "
          f"{cell(get(s, h, 'rss_peak_kib_gw_max'), 1 / 1024, ' MiB')} |")
    p()
    p("RTT in ms (ping every 10 ms; loaded: during an iperf3 TCP 1 stream up). Added per "
      "hop: (idle avg − plain-path idle avg measured in the same namespaces just before "
      "the tunnel came up) / hops. Peak RSS: VmHWM of the tunnel processes.")
    p()
    an = [(s, h, get(s, h, "circuit_build_ms"), get(s, h, "up_ready_ms"))
          for s, h in (("anonnet", "1"), ("anonnet", "3"), ("anonnet-vc", "3"))
          if get(s, h, "circuit_build_ms")]
    idle = [n for n in ("1000", "10000") if get("anonnet", "1", f"idle_bytes_per_circuit_{n}")]
    if an or idle:
        p("### anonnet: circuits")
        p()
        p("| figure | value |")
        p("|---|---|")
        for s, h, b, u in an:
            vc = s == "anonnet-vc"
            p(f"| circuit build, {h} hop(s){', first leg' if vc else ''} "
              f"(ms, from the `anonnet up:` line) | {cell(b)} |")
            p(f"| `anonnet up` start to {'second leg joined' if vc else 'ready'}, {h} hop(s) "
              f"(ms) | {cell(u)} |")
        for n in idle:
            p(f"| gateway bytes per idle circuit at {n} | "
              f"{cell(get('anonnet', '1', f'idle_bytes_per_circuit_{n}'))} |")
            p(f"| gateway RSS after {n} circuits (KiB) | "
              f"{cell(get('anonnet', '1', f'idle_rss_after_kib_{n}'))} |")
            p(f"| build time of {n} circuits (s) | "
              f"{cell(get('anonnet', '1', f'idle_build_secs_{n}'))} |")
        p()
    p("### Targets")
    p()
    p("| figure | median (min–max) | target | met |")
    p("|---|---|---|---|")
    allt = list(ratios.values()) + list(targets.values())
    for st in allt:
        ok = {True: "yes", False: "**no**", None: "–"}[st["met"]]
        p(f"| {st['description']} | {cell(st)} | {st['target']} | {ok} |")
    if not allt:
        p("| (no target could be computed from the systems run) | | | |")
    p()
    p("Ratios are taken pair by pair within each run, then summarised.")
    if notes:
        p()
        p("Notes:")
        for n in notes:
            p(f"- {n}")


def main(argv):
    if len(argv) >= 2 and argv[0] in ("tcp", "udp", "ping"):
        {"tcp": cmd_tcp, "udp": cmd_udp, "ping": cmd_ping}[argv[0]](argv[1])
    elif len(argv) == 4 and argv[0] == "report":
        cmd_report(argv[1], argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
