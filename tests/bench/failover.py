#!/usr/bin/env python3
"""Failover benchmark: time from SIGKILL of the primary to the first
successful write, over N runs, for Rampart's fixed-timeout and phi-accrual
detectors at three settings each, beside Redis Sentinel
(down-after-milliseconds 1000), on the same machine in the same run; then,
optionally, a soak without faults but with CPU load and latency jitter,
counting false failovers.

    tests/bench/failover.py [--runs 20] [--soak 600]

The writer is a plain client: for Rampart it keeps sending SET to Rampart;
for Sentinel it asks Sentinel for the primary's address before each attempt
(what a Sentinel-aware client does) and sends SET there. Needs
redis-server, redis-sentinel, redis-tools.
"""
import argparse, json, os, random, signal, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request
import asyncio

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "rampart")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cmd(port, *args, timeout=0.5):
    """One RESP command on a fresh connection; returns the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if "PONG" in cmd(port, "PING"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not come up")


class Node:
    def __init__(self, work, replica_of=None):
        self.port = free_port()
        self.dir = os.path.join(work, str(self.port))
        os.makedirs(self.dir, exist_ok=True)
        self.start(replica_of)

    def start(self, replica_of=None):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--repl-diskless-sync-delay", "0"]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def info(self, field):
        text = cmd(self.port, "INFO", "replication")
        # Bulk reply: read the whole of it.
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n")
            time.sleep(0.01)
            text = s.recv(65536).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        return None


def start_cluster(work):
    primary = Node(work)
    nodes = [primary, Node(work, primary.port), Node(work, primary.port)]
    settle(nodes, primary)
    return nodes


def settle(nodes, primary, timeout=30):
    """Waits until the primary has two online replicas with no lag."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            offsets = [n.info("master_repl_offset") for n in nodes]
            if primary.info("connected_slaves") == "2" and len(set(offsets)) == 1:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("cluster did not settle")


def first_write_after_kill(target, kill):
    """Kills, then writes until one write succeeds; seconds in between."""
    kill()
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 60:
        i += 1
        try:
            port = target()
            if port and cmd(port, "SET", f"fo:{i}", "x", timeout=0.3).startswith("+OK"):
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.005)
    return float("inf")


def rampart_config(path, port, admin, nodes, probe):
    with open(path, "w") as f:
        f.write(f"""[proxy]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[log]
level = "info"
[probe]
interval_ms = 100
timeout_ms = 500
{probe}
[failover]
state_dir = "{os.path.dirname(path)}/state-{port}"
[shards.main]
nodes = [{", ".join(f'"127.0.0.1:{n.port}"' for n in nodes)}]
[shards.main.replication]
quorum = "one"
manage_replication = true
""")


def topology(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/v1/topology", timeout=2) as r:
        return json.load(r)["shards"][0]


def events(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/v1/events", timeout=2) as r:
        return json.load(r)


def bench_rampart(work, probe, runs):
    nodes = start_cluster(work)
    port, admin = free_port(), free_port()
    conf = os.path.join(work, f"rampart-{port}.toml")
    rampart_config(conf, port, admin, nodes, probe)
    log = open(os.path.join(work, f"rampart-{port}.log"), "w")
    proc = subprocess.Popen([BIN, "run", "--config", conf], stdout=log, stderr=log)
    try:
        wait_port(port)
        time.sleep(1)  # a second of probe history, as any running instance has
        times = []
        for _ in range(runs):
            shard = topology(admin)
            primary = next(n for n in nodes if f"127.0.0.1:{n.port}" == shard["primary"])
            epoch = shard["epoch"]
            times.append(first_write_after_kill(lambda: port, primary.kill))
            deadline = time.time() + 20
            while topology(admin)["epoch"] == epoch and time.time() < deadline:
                time.sleep(0.05)
            primary.start()  # comes back empty; Rampart fences it
            deadline = time.time() + 30
            while time.time() < deadline:
                shard = topology(admin)
                if sum(n["serves_reads"] for n in shard["nodes"]) == 2:
                    break
                time.sleep(0.05)
        return times
    finally:
        proc.terminate()
        proc.wait()
        for n in nodes:
            n.kill()


def bench_sentinel(work, runs, down_after=1000):
    nodes = start_cluster(work)
    sport = free_port()
    conf = os.path.join(work, f"sentinel-{sport}.conf")
    with open(conf, "w") as f:
        f.write(f"""port {sport}
bind 127.0.0.1
dir {work}
sentinel monitor m 127.0.0.1 {nodes[0].port} 1
sentinel down-after-milliseconds m {down_after}
sentinel failover-timeout m 10000
sentinel parallel-syncs m 2
""")
    proc = subprocess.Popen(["redis-sentinel", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def master_port():
        with socket.create_connection(("127.0.0.1", sport), timeout=0.3) as s:
            s.sendall(b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$1\r\nm\r\n")
            time.sleep(0.002)
            lines = s.recv(4096).decode().split("\r\n")
            return int(lines[4]) if len(lines) > 4 and lines[4].isdigit() else None

    try:
        wait_port(sport)
        time.sleep(2)  # let Sentinel discover the replicas
        times = []
        for _ in range(runs):
            current = master_port()
            primary = next(n for n in nodes if n.port == current)
            times.append(first_write_after_kill(master_port, primary.kill))
            deadline = time.time() + 30
            while master_port() == current and time.time() < deadline:
                time.sleep(0.05)
            new = master_port()
            primary.start(replica_of=new)
            settle(nodes, next(n for n in nodes if n.port == new))
            time.sleep(1)  # Sentinel notices the returned replica
        return times
    finally:
        proc.terminate()
        proc.wait()
        for n in nodes:
            n.kill()


async def jitter_forward(listen, target, max_delay):
    async def pipe(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await asyncio.sleep(random.uniform(0, max_delay))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def soak(work, seconds, probe):
    """No faults; CPU burners and 0-30 ms jitter on every path to the nodes."""
    nodes = start_cluster(work)
    fwd = [free_port() for _ in nodes]
    loop = asyncio.new_event_loop()
    for f, n in zip(fwd, nodes):
        loop.create_task(jitter_forward(f, n.port, 0.03))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    time.sleep(0.3)

    class Fwd:
        def __init__(self, port):
            self.port = port
    port, admin = free_port(), free_port()
    conf = os.path.join(work, f"soak-{port}.toml")
    rampart_config(conf, port, admin, [Fwd(f) for f in fwd], probe)
    log = open(os.path.join(work, f"soak-{port}.log"), "w")
    proc = subprocess.Popen([BIN, "run", "--config", conf], stdout=log, stderr=log)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        wait_port(port)
        t0 = time.time()
        writes = 0
        while time.time() - t0 < seconds:
            try:
                cmd(port, "SET", "soak", str(writes), timeout=2)
                writes += 1
            except OSError:
                pass
        promotions = [e for e in events(admin) if e["kind"] in ("promoted", "primary-down")]
        return writes, promotions
    finally:
        for b in burners:
            b.kill()
        proc.terminate()
        proc.wait()
        for n in nodes:
            n.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--soak", type=int, default=0, help="seconds of fault-free soak (0: skip)")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "rampart"], cwd=ROOT, check=True)
    configs = [
        ("rampart fixed-timeout 500 ms", 'down_after_ms = 500'),
        ("rampart fixed-timeout 1000 ms", 'down_after_ms = 1000'),
        ("rampart fixed-timeout 2000 ms", 'down_after_ms = 2000'),
        ("rampart phi-accrual phi 4", 'detector = "phi-accrual"\nphi_threshold = 4.0\nphi_min_std_ms = 150'),
        ("rampart phi-accrual phi 8", 'detector = "phi-accrual"\nphi_threshold = 8.0\nphi_min_std_ms = 150'),
        ("rampart phi-accrual phi 12", 'detector = "phi-accrual"\nphi_threshold = 12.0\nphi_min_std_ms = 150'),
    ]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, probe in configs:
            results[name] = bench_rampart(work, probe, args.runs)
            print(f"  {name}: done", file=sys.stderr)
        results["sentinel down-after 1000 ms"] = bench_sentinel(work, args.runs)
        sentinel = statistics.median(results["sentinel down-after 1000 ms"])
        print(f"SIGKILL of the primary -> first successful write, {args.runs} runs each (seconds)")
        print(f"{'':<32}{'median':>8}{'p90':>8}{'max':>8}{'/sentinel':>11}")
        for name, times in results.items():
            times = sorted(times)
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            print(f"{name:<32}{statistics.median(times):>8.2f}{p90:>8.2f}{times[-1]:>8.2f}"
                  f"{statistics.median(times) / sentinel:>11.2f}")
        if args.soak:
            for name, probe in (configs[1], configs[4]):
                writes, promotions = soak(work, args.soak, probe)
                print(f"soak {args.soak} s, CPU load + 0-30 ms jitter, {name}: "
                      f"{writes} writes, {len(promotions)} false failover steps")


if __name__ == "__main__":
    main()
