"""Load test of `serve` on 127.0.0.1: 4 concurrent clients for 60 s with a mix of good photos, corrupt files,
oversized uploads, empty bodies, deeply nested JSON, foreign Host headers (DNS rebinding), slow clients (a photo as
base64 JSON in 8 pieces over 1.6 s) and clients that vanish mid-upload, for 1 and 2 server processes. It stops by
itself (time and request count).

    python bench/serve_load.py --photos data/scenes --n-photos 24     # bench/results/serve_load.json and .md

Reports requests/s, p50/p95/p99 latency, the status codes returned, the server's peak memory (its processes'
peak resident sets, summed), whether every good request got the labels `predict --images` gives the same file, and
the lines the server logged (at most one per request).
"""
import argparse
import csv
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for `bench`; genderfusion comes from the install
from bench._report import write_tables  # noqa: E402
KINDS = ("good", "good", "corrupt", "oversized", "empty", "nested", "foreign-host", "slow", "vanishing")
NESTED = b'{"images": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


def _vanish(port: int, photo: bytes) -> None:
    """A client that announces a multipart upload, sends part of it and goes away."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  + f"Content-Length: {len(photo) + 200}\r\n\r\n".encode() + b"--x\r\nContent-Disposition: form-data; "
                  b'name="files"; filename="a.jpg"\r\n\r\n' + photo[: len(photo) // 2])


def _slowly(body: bytes, pieces: int = 8, pause: float = 0.2):
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        time.sleep(pause)
        yield body[start:start + step]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """pid and its descendants (uvicorn's worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo += [int(c) for c in children]
    return out


def _peak_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def expected_labels(photos: list[Path]) -> dict[str, list[int]]:
    """The labels `predict --images` gives each photo (its rows in order)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.csv"
        subprocess.run([sys.executable, "-m", "genderfusion", "predict", "--images", *map(str, photos), "--model",
                        "default", "--out", str(out), "--no-progress", "--skip-bad"], check=True,
                       capture_output=True)
        rows = list(csv.DictReader(open(out)))
    got: dict[str, list[int]] = {}
    for r in rows:
        got.setdefault(Path(r["path"]).name, []).append(int(r["label"]))
    return got


def run(workers: int, photos: list[Path], expected: dict, seconds: float, clients: int, max_mb: float,
        max_requests: int) -> dict:
    import httpx

    import base64

    port = _port()
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "genderfusion", "serve", "--model", "default", "--port", str(port),
                               "--workers", str(workers), "--max-mb", str(max_mb)], stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not start")
        oversized = random.Random(0).randbytes(int(max_mb * 2**20) + 1024)
        records, lock, stop = [], threading.Lock(), time.time() + seconds

        def client(k: int) -> None:
            rng = random.Random(k)
            with httpx.Client(base_url=url, timeout=120) as c:
                while time.time() < stop and len(records) < max_requests:
                    kind = rng.choice(KINDS)
                    photo = rng.choice(photos)
                    files = {"good": [("files", (photo.name, photo.read_bytes(), "image/jpeg"))],
                             "corrupt": [("files", ("corrupt.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg"))],
                             "oversized": [("files", ("huge.jpg", oversized, "image/jpeg"))]}.get(kind)
                    t = time.time()
                    if kind == "vanishing":
                        _vanish(port, photo.read_bytes())
                        status = "gone"
                    elif kind == "slow":
                        body = json.dumps({"images": [{"name": photo.name, "data": base64.b64encode(
                            photo.read_bytes()).decode()}]}).encode()
                        r = c.post("/predict", content=_slowly(body), headers={"content-type": "application/json"})
                    elif kind == "nested":
                        r = c.post("/predict", content=NESTED, headers={"content-type": "application/json"})
                    elif kind == "foreign-host":
                        r = c.post("/predict", files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))],
                                   headers={"host": "rebound.example"})
                    else:
                        r = c.post("/predict", files=files) if files else c.post("/predict", content=b"")
                    ms = (time.time() - t) * 1000
                    ok = None
                    if kind != "vanishing":
                        status = r.status_code
                        if kind in ("good", "slow") and status == 200:
                            ok = [row["label"] for row in r.json()["rows"]] == expected[photo.name]
                    with lock:
                        records.append((kind, status, ms, ok))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        t0 = time.time()
        for t in threads:
            t.start()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, _peak_mb(_tree(server.pid)))
            time.sleep(0.5)
        wall = time.time() - t0
        peak = max(peak, _peak_mb(_tree(server.pid)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    log.seek(0)
    logged = log.read().decode(errors="replace").splitlines()

    def pct(values, q):
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 1) if values else None

    lat = [ms for kind, _, ms, _ in records if kind != "vanishing"]
    good = [r for r in records if r[0] in ("good", "slow")]
    return {"workers": workers, "clients": clients, "seconds": round(wall, 1), "requests": len(records),
            "requests_per_s": round(len(records) / wall, 2),
            "good_photos_per_s": round(sum(s == 200 for _, s, _, _ in good) / wall, 2),
            "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)},
            "good_latency_ms": {"p50": pct([r[2] for r in good], 50), "p95": pct([r[2] for r in good], 95),
                                "p99": pct([r[2] for r in good], 99)},
            "status_by_kind": {k: dict(Counter(str(s) for kind, s, _, _ in records if kind == k))
                               for k in sorted(set(KINDS))},
            "server_errors_5xx": sum(isinstance(s, int) and s >= 500 and s not in (503, 504) for _, s, _, _ in records),
            "server_log_lines": len(logged), "tracebacks_logged": sum("Traceback" in line for line in logged),
            "good_same_labels_as_predict": f"{sum(ok is True for *_, ok in good)} of {len(good)}",
            "server_peak_mb": peak}


def markdown(result: dict) -> str:
    lines = ["| server processes | requests/s | good photos/s | p50 ms | p95 ms | p99 ms | status codes | same labels as "
             "predict | 5xx | log lines (requests) | peak memory MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        codes = "; ".join(f"{k}: " + ", ".join(f"{c}x{n}" for c, n in v.items()) for k, v in r["status_by_kind"].items())
        lines.append(f"| {r['workers']} | {r['requests_per_s']} | {r['good_photos_per_s']} | {r['latency_ms']['p50']} | "
                     f"{r['latency_ms']['p95']} | {r['latency_ms']['p99']} | {codes} | "
                     f"{r['good_same_labels_as_predict']} | {r['server_errors_5xx']} | {r.get('server_log_lines', '-')} "
                     f"({r['requests']}) | {r['server_peak_mb']} |")
    return (f"{result['clients']} clients for {result['seconds']} s each, on {result['photos']} photos "
            f"(`{result['command']}`):\n\n" + "\n".join(lines) + "\n")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=str(ROOT / "data" / "scenes"), help="a folder of photos (bench/scenes.py's)")
    p.add_argument("--n-photos", type=int, default=24)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=5000)
    p.add_argument("--max-mb", type=float, default=5.0, help="the server's upload limit; oversized uploads exceed it")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "serve_load.json"))
    args = p.parse_args(argv)
    photos = sorted(Path(args.photos).glob("*.jpg"))[: args.n_photos]
    expected = expected_labels(photos)
    result = {"clients": args.clients, "seconds": args.seconds, "photos": len(photos),
              "command": "python bench/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "runs": [run(int(w), photos, expected, args.seconds, args.clients, args.max_mb, args.max_requests)
                       for w in args.workers.split(",")]}
    return write_tables(result, args.json, markdown)


if __name__ == "__main__":
    sys.exit(main() and 0)
