"""``python -m benchmarks`` (``make bench``): every benchmark, one after the other."""

from benchmarks import bench_core, bench_latency, bench_metrics, bench_optimizers


def main() -> int:
    for module in (bench_core, bench_latency, bench_metrics, bench_optimizers):
        name = module.__name__.rsplit(".", 1)[1]
        print(f"\n## {name}\n", flush=True)
        module.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
