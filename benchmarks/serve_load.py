"""Load on `speakerdb serve`: verify of 3-8 s clips, against the library in the same run.

* (b) offline batch: ``Embedder.embed_files`` on the clips (recordings/s), the ceiling;
* (a) in process: a ``SpeakerDB.verify`` loop, one clip at a time (latency, recordings/s);
* the server, unloaded: one verify request at a time over HTTP (latency);
* the server under load: N concurrent clients (default 16) sending verify requests;
* (c) the CLI: ``speakerdb verify NAME FILE`` as one process per lookup.

Goals (issue 12): throughput under 16 clients >= 0.8x the offline batch throughput; p50 of
an unloaded verify <= 1.3x the in-process call. Bounded: a fixed number of requests.

  python benchmarks/serve_load.py [--clips 48] [--requests 192] [--clients 16] [--cli-runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import DATA, emit, percentiles_ms
from service_helpers import Server

SPEAKERDB = [sys.executable, "-m", "speakerdb"]


def clips(count: int) -> list[Path]:
    """``count`` recordings of 3-8 s from the development sets (LibriSpeech and VCTK),
    several speakers, in a fixed order."""
    found: list[Path] = []
    for folder in ("librispeech", "vctk"):
        for line in (DATA / folder / "manifest.jsonl").read_text().splitlines():
            item = json.loads(line)
            if 3.0 <= float(item["duration"]) <= 8.0:
                found.append(DATA / folder / item["audio_filepath"])
    found.sort()
    step = max(1, len(found) // count)
    return found[::step][:count]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--requests", type=int, default=192, help="requests under load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--unloaded", type=int, default=40, help="sequential HTTP verifies")
    parser.add_argument("--cli-runs", type=int, default=5)
    args = parser.parse_args()

    import httpx

    from speakerdb import SpeakerDB, load_model

    load_before = load()
    probes = clips(args.clips)
    seconds_of_audio = sum(_duration(p) for p in probes)
    enroll = sorted((DATA / "vctk" / "p225").glob("*.wav"))[:3]
    payloads = [(p.name, p.read_bytes()) for p in probes]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'load.sqlite'}"
        model = load_model(device="cpu")
        model.embed_files(probes[:4])  # warm-up
        # (b) offline batch throughput
        started = time.perf_counter()
        model.embed_files(probes)
        batch_s = time.perf_counter() - started
        batch_rps = len(probes) / batch_s
        # (a) the in-process verify loop
        with SpeakerDB.open(url, model=model) as db:
            db.enroll("target", enroll)
            secret = db.create_key("bench", ["verify"]).secret
            db.verify("target", probes[0])
            in_process = []
            started = time.perf_counter()
            for probe in probes:
                t0 = time.perf_counter()
                db.verify("target", probe)
                in_process.append(time.perf_counter() - t0)
            loop_rps = len(probes) / (time.perf_counter() - started)
        del model
        # The server: unloaded, then under load.
        with Server(url, "--no-access-log") as server:
            with server.client(secret) as client:
                for name, data in payloads[:4]:  # warm-up
                    client.post("/v1/speakers/target/verify", files={"audio": (name, data)})
                unloaded = []
                for i in range(args.unloaded):
                    name, data = payloads[i % len(payloads)]
                    t0 = time.perf_counter()
                    answer = client.post(
                        "/v1/speakers/target/verify", files={"audio": (name, data)}
                    )
                    unloaded.append(time.perf_counter() - t0)
                    answer.raise_for_status()
            with server.client() as anonymous:
                metrics_before = anonymous.get("/metrics").text
            loaded: list[float] = []
            failures: list[str] = []
            barrier = threading.Barrier(args.clients + 1)
            lock = threading.Lock()

            def client_thread(worker: int) -> None:
                with httpx.Client(
                    base_url=server.url,
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=300,
                ) as c:
                    barrier.wait()
                    for i in range(worker, args.requests, args.clients):
                        name, data = payloads[i % len(payloads)]
                        t0 = time.perf_counter()
                        answer = c.post("/v1/speakers/target/verify", files={"audio": (name, data)})
                        elapsed = time.perf_counter() - t0
                        with lock:
                            loaded.append(elapsed)
                            if answer.status_code != 200:
                                failures.append(answer.text[:200])

            threads = [
                threading.Thread(target=client_thread, args=(w,)) for w in range(args.clients)
            ]
            for t in threads:
                t.start()
            barrier.wait()
            started = time.perf_counter()
            for t in threads:
                t.join()
            loaded_s = time.perf_counter() - started
            with server.client() as anonymous:
                metrics = anonymous.get("/metrics").text
        loaded_rps = args.requests / loaded_s
        batch_files = _histogram_mean(metrics, metrics_before, "speakerdb_embed_batch_files")
        # (c) the CLI, one process per lookup
        cli = []
        for probe in probes[: args.cli_runs]:
            t0 = time.perf_counter()
            subprocess.run(
                [*SPEAKERDB, "verify", "target", str(probe), "--db", url],
                check=False,
                capture_output=True,
            )
            cli.append(time.perf_counter() - t0)
    load_after = load()
    inproc = percentiles_ms(in_process)
    single = percentiles_ms(unloaded)
    under = percentiles_ms(loaded)
    cli_stats = percentiles_ms(cli)
    record = {
        "benchmark": "serve_load",
        "clips": len(probes),
        "audio_seconds": round(seconds_of_audio, 1),
        "clients": args.clients,
        "requests_under_load": args.requests,
        "failures": len(failures),
        "offline_batch_rps": round(batch_rps, 2),
        "in_process_rps": round(loop_rps, 2),
        "in_process": inproc,
        "http_unloaded": single,
        "http_loaded": under,
        "http_loaded_rps": round(loaded_rps, 2),
        "mean_files_per_batch": round(batch_files, 2),
        "cli_rps": round(len(cli) / sum(cli), 3),
        "cli": cli_stats,
        "loaded_over_offline_batch": round(loaded_rps / batch_rps, 3),
        "unloaded_p50_over_in_process_p50": round(single["p50_ms"] / inproc["p50_ms"], 3),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
    }
    lines = [
        f"{len(probes)} clips of 3-8 s ({seconds_of_audio:.0f} s of audio); load average "
        f"before {load_before}, after {load_after} ({os.cpu_count()} CPUs)",
        f"(b) offline batch embed_files:        {batch_rps:7.2f} recordings/s",
        f"(a) in-process SpeakerDB.verify loop: {loop_rps:7.2f} /s, p50 {inproc['p50_ms']:.1f} ms, "
        f"p99 {inproc['p99_ms']:.1f} ms",
        f"    HTTP, one request at a time:      p50 {single['p50_ms']:.1f} ms, "
        f"p99 {single['p99_ms']:.1f} ms  -> {record['unloaded_p50_over_in_process_p50']}x "
        "in-process",
        f"    HTTP, {args.clients} clients:               {loaded_rps:7.2f} requests/s, "
        f"p50 {under['p50_ms']:.1f} ms, p99 {under['p99_ms']:.1f} ms, {batch_files:.1f} "
        f"recordings per batch -> {record['loaded_over_offline_batch']}x offline batch",
        f"(c) CLI, one process per lookup:      {record['cli_rps']:7.3f} /s, "
        f"p50 {cli_stats['p50_ms']:.0f} ms",
    ]
    if failures:
        lines.append(f"FAILED requests: {len(failures)}: {failures[:3]}")
    emit(lines, record)


def _duration(path: Path) -> float:
    import soundfile

    return float(soundfile.info(str(path)).duration)


def _histogram_mean(text: str, before: str, name: str) -> float:
    """Mean of the observations of histogram ``name`` made between two scrapes."""

    def values(scrape: str) -> dict[str, float]:
        found = {}
        for line in scrape.splitlines():
            for suffix in ("_sum", "_count"):
                if line.startswith(name + suffix + " "):
                    found[suffix] = float(line.split()[1])
        return found

    now, then = values(text), values(before)
    count = now.get("_count", 0.0) - then.get("_count", 0.0)
    return (now.get("_sum", 0.0) - then.get("_sum", 0.0)) / max(count, 1.0)


if __name__ == "__main__":
    main()
