"""Serving under load: the detector pyfunc behind ``mlflow models serve`` on 127.0.0.1, driven by bounded clients.

The model is a YOLO-World (scale n, untrained, so the figures are about serving, not accuracy) packaged exactly as
``medrov train`` packages one: weights, config and the embedding table of the MiniLM encoder over a small
vocabulary, in a throw-away SQLite store. The server is ``mlflow models serve --env-manager local --workers 1``.

Measured in the same run: first a baseline of one client in sequence, then ``--clients`` clients at once for
``--seconds``. Printed: requests, errors (must be 0), p50/p99 latency, requests/s, the ratios against the
baseline, and the server's RSS (its whole process tree) at start and at the end.

    python bench/serve_load.py                 # 8 clients, 60 s
    python bench/serve_load.py --seconds 10    # a short run
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _package_model(work: Path) -> str:
    """A train run holding the pyfunc in a SQLite store under ``work``; returns its ``runs:/`` URI."""
    import mlflow

    from medrov.config import load_params
    from medrov.model import pyfunc
    from medrov.model.ultra import prepare_ultralytics
    from medrov.steps.common import prompter

    prepare_ultralytics()
    from ultralytics import YOLOWorld

    weights = work / "world-n.pt"
    YOLOWorld("yolov8n-worldv2.yaml").save(weights)
    data = work / "omnis.yaml"
    data.write_text("names: {0: liver, 1: spleen/lien, 2: kidney tumor, 3: red blood cell}\n")
    params = load_params(ROOT / "params.yaml", [f"text.cache_dir={work / 'text-cache'}"])
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    mlflow.set_experiment("serve-load")
    with mlflow.start_run() as run:
        pyfunc.log_model(data, weights, prompter(params, "minilm"), imgsz=160)
    return f"runs:/{run.info.run_id}/{pyfunc.MODEL_NAME}"


def _body() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    return json.dumps(
        {
            "dataframe_split": {"columns": ["image", "prompts"], "data": [[image, "liver; spleen"]]},
            "params": {"imgsz": 160},
        }
    ).encode()


def _rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def _drive(url: str, body: bytes, clients: int, seconds: float) -> dict:
    """``clients`` threads, each sending one request after the other until ``seconds`` have passed."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as resp:
                    payload = json.loads(resp.read())
                ok = resp.status == 200 and "predictions" in payload
                problem = None if ok else f"HTTP {resp.status}: {str(payload)[:100]}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - start
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[:1],
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(ordered) * 1000 if ordered else 0,
        "rps": len(latencies) / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=None, help="single-client baseline (default: seconds/4)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from medrov.env import apply_offline_env

    apply_offline_env()
    with tempfile.TemporaryDirectory(prefix="medrov-serve-") as tmp:
        work = Path(tmp)
        model_uri = _package_model(work)
        port = _free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
        log = open(work / "server.log", "w")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                model_uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {(work / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
            body = _body()
            _drive(f"{base}/invocations", body, 1, 2.0)  # warm-up: the first request loads the model lazily
            rss_start = _rss(server.pid)
            baseline = _drive(f"{base}/invocations", body, 1, args.baseline_seconds or max(args.seconds / 4, 3.0))
            load = _drive(f"{base}/invocations", body, args.clients, args.seconds)
            rss_end = _rss(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    print(f"{'':<12}{'clients':>8}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}")
    for name, r in (("baseline", baseline), ("load", load)):
        print(
            f"{name:<12}{r['clients']:>8}{r['requests']:>10}{r['errors']:>8}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['rps']:>8.2f}"
        )
    print(
        f"ratios load/baseline: p50 {load['p50_ms'] / baseline['p50_ms']:.2f}x, "
        f"p99 {load['p99_ms'] / baseline['p99_ms']:.2f}x, req/s {load['rps'] / baseline['rps']:.2f}x"
    )
    print(
        f"server RSS: start {rss_start / 2**20:.0f} MiB, end {rss_end / 2**20:.0f} MiB "
        f"({(rss_end - rss_start) / 2**20:+.0f} MiB)"
    )
    if load["errors"] or baseline["errors"]:
        print(f"ERRORS: {load['first_error'] or baseline['first_error']}")
    if args.json:
        args.json.write_text(
            json.dumps({"baseline": baseline, "load": load, "rss_start": rss_start, "rss_end": rss_end}, indent=2)
        )
    raise SystemExit(1 if load["errors"] or baseline["errors"] else 0)


if __name__ == "__main__":
    main()
