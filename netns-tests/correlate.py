#!/usr/bin/env python3
"""The flow-correlation attack of docs/SECURITY.md (timing analysis) on real
captures, for the flow-correlation case of netns-tests/run.sh. It mirrors
tests/timing_attack.rs: flows with their own on/off patterns and sizes, bytes per
100 ms window each way, Pearson scores, top-1 and the true-positive rate at 1%
false positives.

  correlate.py serve ADDR PORT COUNT
      UDP responder on ADDR:PORT .. PORT+COUNT-1. A request starts with
      (responses u8, length u16, sequence u32); it is answered by `responses`
      datagrams of `length` bytes, each starting with the sequence number.
      Prints "serving" once every socket is bound.
  correlate.py flow ADDR PORT SEED START SECS
      One client's flow, its pattern drawn from SEED, from the wall-clock time
      START for SECS seconds. Prints "sent answered", then each answered
      request's round trip (ms, request to first response) on a line of its own.
  correlate.py attack START SECS CLIENT_TXT... -- EXIT_TXT PORT
      Reads `tcpdump -n -tt` text: one file per client (its link to the entry,
      flow i = the i-th file) and the exit's internet side, where flow i is
      server port PORT + i. Prints "top1 tpr true_mean wrong_mean client_bytes".
"""

import random
import re
import select
import socket
import struct
import sys
import time

BIN = 0.1
HEADER = struct.Struct("!BHI")
# Below the tunnel's MTU (1280) less IPv4 and UDP headers.
MAX_LEN = 1200
# The gateways' port in the test network.
ENTRY_PORT = 9000


def serve(addr, port, count):
    socks = []
    for p in range(port, port + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, p))
        socks.append(s)
    print("serving", flush=True)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for s in ready:
            req, peer = s.recvfrom(2048)
            if len(req) < HEADER.size:
                continue
            n, length, seq = HEADER.unpack_from(req)
            body = struct.pack("!I", seq) + bytes(max(0, min(length, MAX_LEN) - 4))
            for _ in range(min(n, 3)):
                s.sendto(body, peer)


def pattern(seed):
    """The flow's parameters, drawn like tests/timing_attack.rs draws them."""
    rng = random.Random(seed)
    small = rng.randint(40, 400)
    large = rng.randint(400, MAX_LEN)
    return rng, {
        "rate": rng.randint(2, 20),
        "responses": rng.randint(1, 3),
        "request": (HEADER.size + 4, small),
        "response": (small, large),
        "on": (rng.randint(200, 800) / 1000, rng.randint(1000, 4000) / 1000),
        "off": (rng.randint(200, 800) / 1000, rng.randint(1000, 6000) / 1000),
    }


def schedule(rng, f, start, secs):
    """Request times: Poisson arrivals at the flow's rate during its on periods."""
    times = []
    t = start
    on = rng.random() < 0.5
    while t < start + secs:
        length = rng.uniform(*f["on"] if on else f["off"])
        if on:
            u = t + rng.expovariate(f["rate"])
            while u < min(t + length, start + secs):
                times.append(u)
                u += rng.expovariate(f["rate"])
        t += length
        on = not on
    return times


def flow(addr, port, seed, start, secs):
    rng, f = pattern(seed)
    times = schedule(rng, f, start, secs)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, port))
    s.setblocking(False)
    sent = {}
    rtts = []

    def receive(until):
        while True:
            wait = until - time.time()
            if wait <= 0:
                return
            ready, _, _ = select.select([s], [], [], wait)
            if not ready:
                return
            try:
                data = s.recv(2048)
            except OSError:
                continue
            if len(data) >= 4:
                seq = struct.unpack_from("!I", data)[0]
                if seq in sent:
                    rtts.append((time.time() - sent.pop(seq)) * 1000)

    for seq, at in enumerate(times):
        receive(at)
        length = rng.randint(*f["request"])
        req = HEADER.pack(f["responses"], rng.randint(*f["response"]), seq)
        try:
            s.send(req + bytes(length - len(req)))
        except OSError:
            continue
        sent[seq] = time.time()
    receive(start + secs + 1)
    print(len(times), len(rtts))
    for rtt in rtts:
        print(f"{rtt:.2f}")


LINE = re.compile(r"^(\d+\.\d+) IP (\S+) > (\S+): UDP, length (\d+)")


def series(path, start, secs, key):
    """Bytes per window per (key, upward), from tcpdump text; `key` maps a
    (source, destination) pair to (key, upward) or None."""
    bins = int(round(secs / BIN))
    out = {}
    total = 0
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        t = float(m[1])
        k = key(m[2], m[3])
        if k is None or not start <= t < start + secs:
            continue
        total += int(m[4])
        out.setdefault(k, [0.0] * bins)[min(int((t - start) / BIN), bins - 1)] += int(m[4])
    return out, total


def corr(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    ab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    aa = sum((x - ma) ** 2 for x in a)
    bb = sum((y - mb) ** 2 for y in b)
    return 0.0 if aa < 1e-9 or bb < 1e-9 else ab / (aa * bb) ** 0.5


def attack(start, secs, clients, exit_txt, port):
    n = len(clients)
    bins = int(round(secs / BIN))
    zero = [0.0] * bins

    def port_of(endpoint):
        return int(endpoint.rsplit(".", 1)[1].rstrip(":"))

    def exit_key(src, dst):
        if port <= port_of(dst) < port + n:
            return (port_of(dst) - port, True)
        if port <= port_of(src) < port + n:
            return (port_of(src) - port, False)
        return None

    def client_key(src, dst):
        return (0, port_of(dst) == ENTRY_PORT)

    exits, _ = series(exit_txt, start, secs, exit_key)
    links = []
    client_bytes = 0
    for path in clients:
        s, total = series(path, start, secs, client_key)
        links.append(s)
        client_bytes += total
    scores = [
        [
            sum(
                corr(links[i].get((0, up), zero), exits.get((j, up), zero))
                for up in (True, False)
            )
            for j in range(n)
        ]
        for i in range(n)
    ]
    top1 = 0.0
    for i, row in enumerate(scores):
        best = max(row)
        tied = sum(1 for x in row if x >= best - 1e-12)
        if row[i] >= best - 1e-12:
            top1 += 1 / tied
    wrong = sorted((scores[i][j] for i in range(n) for j in range(n) if i != j), reverse=True)
    threshold = wrong[len(wrong) // 100]
    tpr = sum(1 for i in range(n) if scores[i][i] > threshold) / n
    true_mean = sum(scores[i][i] for i in range(n)) / n
    print(f"{top1 / n:.3f} {tpr:.3f} {true_mean:.3f} {sum(wrong) / len(wrong):.3f} {client_bytes}")


def main(argv):
    if len(argv) >= 1 and argv[0] == "serve" and len(argv) == 4:
        serve(argv[1], int(argv[2]), int(argv[3]))
    elif len(argv) >= 1 and argv[0] == "flow" and len(argv) == 6:
        flow(argv[1], int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5]))
    elif len(argv) >= 6 and argv[0] == "attack" and argv[-3] == "--":
        attack(float(argv[1]), float(argv[2]), argv[3:-3], argv[-2], int(argv[-1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
