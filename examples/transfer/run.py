# ruff: noqa: T201  (a script: it prints)
"""Transfer learning end to end, against a running service: an autoencoder learns the digits
without their labels, then a classifier trained on 100 labelled digits starts from its
encoder.

    python examples/transfer/run.py                 # the service of `make serve`
    python examples/transfer/run.py --epochs 3      # shorter runs of both jobs
    python examples/transfer/run.py --write-image-folder digits.zip   # data for the resnet18
                                                                      # examples, then exit

It submits digits-autoencoder.json, waits for it, submits digits-encoder-classifier.json
with `backbone.from_job` set to the autoencoder's id, waits for that, and prints each job's
verdict and fit diagnosis. Exit status 0 if both succeeded. The service and the token are
found as the `descent` command finds them: --url or DESCENT_URL, --token or DESCENT_TOKEN or
the file data/token.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from descent_client.client import DescentClient, DescentError
from descent_client.commands import report

HERE = Path(__file__).resolve().parent


def spec(name: str, epochs: int | None) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((HERE / name).read_text())
    if epochs is not None:
        loaded["training"]["epochs"] = epochs
    return loaded


def run(client: DescentClient, job_spec: dict[str, Any]) -> dict[str, Any]:
    job = client.submit(job_spec)
    print(f"submitted {job_spec['name']}: {job['id']}", file=sys.stderr, flush=True)
    final: dict[str, Any] = dict(client.wait(job["id"]))
    report(final, sys.stdout)  # type: ignore[arg-type]
    print(flush=True)
    return final


def write_image_folder(path: Path) -> int:
    """The 8×8 digits as an image folder zip (one folder of PNGs per class): an upload for
    the resnet18 examples. Returns the number of images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    with zipfile.ZipFile(path, "w") as archive:
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            pixels = (image * (255 / 16)).round().astype("uint8")
            png = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(png, format="PNG")
            archive.writestr(f"digits/{label}/{i:04d}.png", png.getvalue())
    return len(digits.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the service (default: $DESCENT_URL or 127.0.0.1:8000)")
    parser.add_argument("--token", help="API token (default: $DESCENT_TOKEN, else data/token)")
    parser.add_argument("--epochs", type=int, help="epochs of each job (default: the specs')")
    parser.add_argument(
        "--write-image-folder", type=Path, metavar="ZIP",
        help="write the digits as an image-folder zip and exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.write_image_folder:
        count = write_image_folder(args.write_image_folder)
        print(f"wrote {count} images in 10 class folders to {args.write_image_folder}")
        return 0
    try:
        with DescentClient(args.url, args.token) as client:
            encoder = run(client, spec("digits-autoencoder.json", args.epochs))
            if encoder["status"] != "succeeded":
                return 1
            classifier_spec = spec("digits-encoder-classifier.json", args.epochs)
            classifier_spec["backbone"]["from_job"] = encoder["id"]
            classifier = run(client, classifier_spec)
    except DescentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if classifier["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
