"""Bounded load test of ``fuseface serve``: ``/search`` with a real model over real photos.

Starts ``fuseface serve`` on 127.0.0.1 (a free port) in a subprocess with a fresh gallery, enrols
the ``deepface_pairs`` people through ``POST /enroll`` (the first two photos of every identity with
at least three), then runs ``--clients`` concurrent clients for ``--seconds`` seconds, each posting
one held-out photo per ``/search`` request (multipart) in a loop. Reported: requests/s, latency
p50/p95/p99, the number of errors (non-200 answers or wrong identities, counted apart), the
server's peak resident memory (VmHWM of its process) and how many images the batching queue put
into each model call. The machine this runs on is shared; the figures are for this machine at that
moment, not a capacity rating.

Usage::

    python benchmarks/serve_load.py                       # dlib-resnet, 8 clients, 30 s
    python benchmarks/serve_load.py --seconds 60 --clients 8 -m dlib-resnet
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import httpx

    from gallery_fixtures import deepface_people

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default="dlib-resnet")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "deepface_pairs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    people = [g for g in deepface_people(args.data) if len(g) >= 3]
    key = secrets.token_hex(16)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FUSEFACE_API_KEY": key, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    fuseface_cmd = [sys.executable, "-m", "fuseface.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "g"
        subprocess.run([*fuseface_cmd, "gallery", "create", str(gallery), "-m", args.model], env=env, check=True)
        server = subprocess.Popen(
            [*fuseface_cmd, "serve", "--gallery", str(gallery), "--host", "127.0.0.1", "--port", str(port)], env=env
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
            t = time.perf_counter()
            for i, photos in enumerate(people):
                files = [("images", (p, (args.data / p).read_bytes(), "image/jpeg")) for p in photos[:2]]
                r = httpx.post(
                    f"{url}/enroll", data={"name": f"person{i}"}, files=files, headers={"X-API-Key": key}, timeout=300
                )
                r.raise_for_status()
            enrol_s = time.perf_counter() - t
            probes = [
                (f"person{i}", photos[2], (args.data / photos[2]).read_bytes()) for i, photos in enumerate(people)
            ]
            base = httpx.get(f"{url}/health").json()
            latencies: list[float] = []
            errors = {"http": 0, "wrong_identity": 0}
            lock = threading.Lock()
            stop_at = time.monotonic() + args.seconds

            def client(c: int) -> None:
                with httpx.Client(timeout=120) as http:
                    j = c
                    while time.monotonic() < stop_at:
                        name, fname, data = probes[j % len(probes)]
                        j += 1
                        t0 = time.perf_counter()
                        try:
                            r = http.post(f"{url}/search", files=[("images", (fname, data, "image/jpeg"))])
                            ok = r.status_code == 200
                            match = r.json()["results"][0]["match"] if ok else None
                        except httpx.HTTPError:
                            ok, match = False, None
                        dt = time.perf_counter() - t0
                        with lock:
                            latencies.append(dt)
                            if not ok:
                                errors["http"] += 1
                            elif match != name:
                                errors["wrong_identity"] += 1

            t = time.perf_counter()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            health = httpx.get(f"{url}/health").json()
            peak = _peak_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    lat = np.array(latencies) * 1e3
    batches = health["batches"] - base["batches"]
    result = {
        "benchmark": "serve_load",
        "model": args.model,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "identities": len(people),
        "enrol_s": round(enrol_s, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p95", "p99")},
        "errors": errors,
        "server_peak_rss_mib": round(peak, 1),
        "images_per_model_call": round((health["batched_images"] - base["batched_images"]) / max(batches, 1), 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "machine_note": "server and clients on the same 2-core machine",
    }
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
