"""Checkpoint save and upload to S3-compatible storage, against boto3 uploading the same
bytes from memory.

A model of about 100 MB (a digits MLP 64-5000-5000-10, 25.4M float32 parameters) is trained
one epoch by the core (SGD with the spec's default momentum: the resume state holds one
momentum buffer per parameter, as large as the weights). The service's path is what a
worker's checkpoint writer does at the end of an epoch (worker/runner.py
``_store_checkpoint``): the snapshot (a CPU copy of weights and resume state, taken on the
training thread), then ``worker.writer.store_files``: the weights encoded (safetensors) and
their sha256, their upload started (``S3Artifacts.write``: boto3's managed transfer from
memory with the service's settings, sha256 in the object's metadata) while the resume state
is encoded and uploaded. The baseline uploads the very same bytes (already encoded, in
memory) one file after the other with ``upload_fileobj`` and the same ``TransferConfig``.
Throughput is bytes over wall time; the ratio is service over boto3 (goal ≥ 0.8). The S3
server is moto's standalone server on this machine, as in the tests.

    python -m benchmarks.bench_s3 [--repeats 5] [--hidden 5000]
"""

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import load, machine
from core.results import EpochRecord
from core.spec import JobSpec
from core.train import Trainer
from descent.settings import Settings
from store.s3 import S3Artifacts
from tests.s3 import CREDENTIALS, s3_server
from worker.writer import snapshot, store_files

GOAL = 0.8


def spec(hidden: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": {"arch": "mlp", "hidden": [hidden, hidden]},
            "optimizer": {"name": "sgd", "lr": 0.01},
            "training": {"epochs": 1, "batch_size": 256, "seed": 0, "device": "cpu"},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=5000, help="units per hidden layer")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}; load at start: {load()}", flush=True)

    trainer = Trainer(spec(args.hidden)).setup()
    trainer.train()
    record: EpochRecord = trainer.history[-1]
    with tempfile.TemporaryDirectory(prefix="descent-bench-s3-") as tmp:
        folder = Path(tmp)
        with s3_server(folder) as server:
            bucket = server.bucket()
            os.environ.update(CREDENTIALS)
            settings = Settings(
                data_dir=folder / "data",
                artifacts_url=f"s3://{bucket}/artifacts",
                s3_endpoint_url=server.url,
            )
            store = S3Artifacts.from_settings(settings)
            client, transfer = store.client, store.transfer
            service_s: list[float] = []
            boto_s: list[float] = []
            total = 0
            for i in range(args.repeats):
                # The service's path (worker/runner.py _store_checkpoint): snapshot on the
                # training thread, then the two files encoded and uploaded from memory.
                start = time.perf_counter()
                snap = snapshot(trainer, record)
                copied = time.perf_counter()
                files = store_files(store, f"bench/{i}", snap.contents)
                done = time.perf_counter()
                service_s.append(done - start)
                timing = (copied - start, done - copied)
                # The same bytes, for the baseline (untimed).
                weights_bytes = snap.contents.encode_weights()
                state_bytes = snap.contents.encode_state()
                total = len(weights_bytes) + len(state_bytes)
                assert files.bytes == len(weights_bytes)
                # The baseline: the same bytes from memory.
                start = time.perf_counter()
                for name, data in (("w", weights_bytes), ("s", state_bytes)):
                    client.upload_fileobj(
                        io.BytesIO(data), bucket, f"baseline/{i}/{name}", Config=transfer
                    )
                boto_s.append(time.perf_counter() - start)
                print(
                    f"  repeat {i + 1}: {total / 1e6:.1f} MB; service {service_s[-1]:.2f} s, "
                    f"boto3 {boto_s[-1]:.2f} s (snapshot {timing[0]:.2f} s, "
                    f"encode and store {timing[1]:.2f} s)",
                    flush=True,
                )
    service, boto = statistics.median(service_s), statistics.median(boto_s)
    ratio = boto / service
    verdict = "met" if ratio >= GOAL else "not met"
    print(
        f"\n| bytes | service s | MB/s | boto3 s | MB/s | service/boto3 | goal |\n"
        f"| ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        f"| {total:,} | {service:.2f} | {total / 1e6 / service:.0f} | {boto:.2f} | "
        f"{total / 1e6 / boto:.0f} | **{ratio:.2f}** | ≥ {GOAL} {verdict} |"
    )
    print(f"load at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
