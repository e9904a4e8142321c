"""Load on `speakerdb serve`: verify of 3-8 s clips, against the library in the same run.

* (b) offline batch: ``Embedder.embed_files`` on the clips (recordings/s), the ceiling;
* (a) in process: a ``SpeakerDB.verify`` loop, one clip at a time (latency, recordings/s);
* the server, unloaded: one verify request at a time over HTTP (latency), alternating
  with (a) clip by clip;
* the server under load: N concurrent clients (default 16) sending verify requests;
* (c) the CLI: ``speakerdb verify NAME FILE`` as one process per lookup.

The first four are measured in interleaved rounds (b, a, unloaded, loaded; again ...), so
that a machine whose other load changes during the run biases none of them; each ratio is
taken within a round, and the median round is reported with the range.

Goals (issue 12): throughput under 16 clients >= 0.8x the offline batch throughput; p50 of
an unloaded verify <= 1.3x the in-process call. Bounded: a fixed number of requests.

  python benchmarks/serve_load.py [--rounds 3] [--clips 48] [--requests 96] [--clients 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
VERIFY = "/v1/speakers/target/verify"


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


def loaded_round(server: Server, secret: str, payloads, requests: int, clients: int):
    """``requests`` verify requests from ``clients`` threads at once: (requests/s,
    latencies in s, failures)."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)
    lock = threading.Lock()

    def client_thread(worker: int) -> None:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=300
        ) as c:
            barrier.wait()
            for i in range(worker, requests, clients):
                name, data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                answer = c.post(VERIFY, files={"audio": (name, data)})
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if answer.status_code != 200:
                        failures.append(answer.text[:200])

    threads = [threading.Thread(target=client_thread, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return requests / (time.perf_counter() - started), latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--requests", type=int, default=96, help="loaded requests per round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument(
        "--serve-args", default="", help="extra options of speakerdb serve, e.g. '--batches 1'"
    )
    args = parser.parse_args()

    from speakerdb import SpeakerDB, load_model

    load_before = load()
    probes = clips(args.clips)
    seconds_of_audio = sum(_duration(p) for p in probes)
    enroll = sorted((DATA / "vctk" / "p225").glob("*.wav"))[:3]
    payloads = [(p.name, p.read_bytes()) for p in probes]
    rounds: list[dict[str, float]] = []
    in_process: list[float] = []
    unloaded: list[float] = []
    loaded: list[float] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'load.sqlite'}"
        model = load_model(device="cpu")
        with SpeakerDB.open(url, model=model) as db:
            db.enroll("target", enroll)
            secret = db.create_key("bench", ["verify"]).secret
        with (
            Server(url, "--no-access-log", *args.serve_args.split()) as server,
            SpeakerDB.open(url, model=model) as db,
            server.client(secret) as client,
        ):
            model.embed_files(probes[:4])  # warm-up, both sides
            db.verify("target", probes[0])
            for name, data in payloads[:4]:
                client.post(VERIFY, files={"audio": (name, data)}).raise_for_status()
            batch_files: list[float] = []
            # CPU seconds per recording: offline, and per request in the server and in
            # the clients (this process) during the loaded phase.
            offline_cpu: list[float] = []
            served_cpu: list[float] = []
            client_cpu: list[float] = []
            for _ in range(args.rounds):
                # (b) offline batch
                started, cpu = time.perf_counter(), _own_cpu()
                model.embed_files(probes)
                batch_rps = len(probes) / (time.perf_counter() - started)
                offline_cpu.append((_own_cpu() - cpu) / len(probes))
                # (a) in process and over HTTP (unloaded), one at a time, alternating clip
                # by clip so that both see the same machine
                these: list[float] = []
                single: list[float] = []
                for probe, (name, data) in zip(probes, payloads, strict=True):
                    t0 = time.perf_counter()
                    db.verify("target", probe)
                    these.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    client.post(VERIFY, files={"audio": (name, data)}).raise_for_status()
                    single.append(time.perf_counter() - t0)
                loop_rps = len(probes) / sum(these)
                in_process += these
                unloaded += single
                # HTTP, under load
                with server.client() as anonymous:
                    metrics_before = anonymous.get("/metrics").text
                cpu, server_cpu = _own_cpu(), _cpu_of(server.process.pid)
                loaded_rps, latencies, failed = loaded_round(
                    server, secret, payloads, args.requests, args.clients
                )
                client_cpu.append((_own_cpu() - cpu) / args.requests)
                served_cpu.append((_cpu_of(server.process.pid) - server_cpu) / args.requests)
                with server.client() as anonymous:
                    metrics = anonymous.get("/metrics").text
                batch_files.append(
                    _histogram_mean(metrics, metrics_before, "speakerdb_embed_batch_files")
                )
                loaded += latencies
                failures += failed
                rounds.append(
                    {
                        "offline_batch_rps": round(batch_rps, 2),
                        "in_process_rps": round(loop_rps, 2),
                        "http_loaded_rps": round(loaded_rps, 2),
                        "loaded_over_offline_batch": round(loaded_rps / batch_rps, 3),
                        "unloaded_p50_over_in_process_p50": round(
                            statistics.median(single) / statistics.median(these), 3
                        ),
                    }
                )
        del model
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

    def median_of(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    def spread(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{min(values):g}-{max(values):g}"

    inproc, single_ms = percentiles_ms(in_process), percentiles_ms(unloaded)
    under, cli_stats = percentiles_ms(loaded), percentiles_ms(cli)
    record = {
        "benchmark": "serve_load",
        "rounds": rounds,
        "clips": len(probes),
        "audio_seconds": round(seconds_of_audio, 1),
        "clients": args.clients,
        "requests_under_load": args.requests * args.rounds,
        "failures": len(failures),
        "offline_batch_rps": median_of("offline_batch_rps"),
        "in_process_rps": median_of("in_process_rps"),
        "http_loaded_rps": median_of("http_loaded_rps"),
        "in_process": inproc,
        "http_unloaded": single_ms,
        "http_loaded": under,
        "mean_files_per_batch": round(statistics.mean(batch_files), 2),
        "cpu_ms_per_recording_offline": round(statistics.median(offline_cpu) * 1000, 1),
        "cpu_ms_per_request_server": round(statistics.median(served_cpu) * 1000, 1),
        "cpu_ms_per_request_clients": round(statistics.median(client_cpu) * 1000, 1),
        "cli_rps": round(len(cli) / sum(cli), 3),
        "cli": cli_stats,
        "loaded_over_offline_batch": median_of("loaded_over_offline_batch"),
        "unloaded_p50_over_in_process_p50": median_of("unloaded_p50_over_in_process_p50"),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpus": os.cpu_count(),
    }
    lines = [
        f"{len(probes)} clips of 3-8 s ({seconds_of_audio:.0f} s of audio), {args.rounds} "
        f"interleaved rounds; load average before {load_before}, after {load_after} "
        f"({os.cpu_count()} CPUs); medians of the rounds (range)",
        f"(b) offline batch embed_files:  {record['offline_batch_rps']:6.2f} recordings/s "
        f"({spread('offline_batch_rps')})",
        f"(a) in-process verify loop:     {record['in_process_rps']:6.2f} /s, "
        f"p50 {inproc['p50_ms']:.1f} ms, p99 {inproc['p99_ms']:.1f} ms",
        f"    HTTP, one at a time:        p50 {single_ms['p50_ms']:.1f} ms, p99 "
        f"{single_ms['p99_ms']:.1f} ms -> p50 {record['unloaded_p50_over_in_process_p50']}x "
        f"in-process ({spread('unloaded_p50_over_in_process_p50')})",
        f"    HTTP, {args.clients} clients:         {record['http_loaded_rps']:6.2f} requests/s "
        f"({spread('http_loaded_rps')}), p50 {under['p50_ms']:.0f} ms, p99 "
        f"{under['p99_ms']:.0f} ms, {record['mean_files_per_batch']:.1f} recordings per batch -> "
        f"{record['loaded_over_offline_batch']}x offline batch "
        f"({spread('loaded_over_offline_batch')})",
        f"    CPU per recording: offline {record['cpu_ms_per_recording_offline']} ms; per "
        f"request under load: server {record['cpu_ms_per_request_server']} ms, the "
        f"{args.clients} clients {record['cpu_ms_per_request_clients']} ms",
        f"(c) CLI, one process per lookup: {record['cli_rps']:6.3f} /s, "
        f"p50 {cli_stats['p50_ms']:.0f} ms",
    ]
    if failures:
        lines.append(f"FAILED requests: {len(failures)}: {failures[:3]}")
    emit(lines, record)


def _own_cpu() -> float:
    """CPU seconds used by this process so far (all threads)."""
    times = os.times()
    return times.user + times.system


def _cpu_of(pid: int) -> float:
    """CPU seconds used by process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
