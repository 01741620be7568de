#!/usr/bin/env bash
# Prepare the working tree for one GPU session (docs/gpu.md). Run it HERE, where PyPI is reachable,
# before the device call; it is idempotent.
#
#   bash benchmarks/gpu_prepare.sh
#
# - .whl/       the Python packages ebru's benchmarks need that the device image lacks, as wheels for
#               CPython 3.12 on x86-64 Linux: diffusers (the peer), cryptography + cffi + pycparser
#               (ebru.trust signatures), rdata (the Austen corpus). Versions: those installed here, so the
#               CPU smoke test and the GPU run use the same code.
# - .gpu-data/  Fashion-MNIST's four IDX files and the unpacked r-cran-janeaustenr package (the device
#               has none of our Debian data).
# Both folders are added to .git/info/exclude and travel with `carry`. The script checks that every
# requirement of every wheel is either another wheel here or in the device image, that the whole
# payload stays under the 64 MiB limit, and prints the exact arguments of the device call.
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
PY=${PYTHON:-python3}
LIMIT_MIB=64

# --- ignored folders that travel with `carry` --------------------------------------------------
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
touch "$EXCLUDE"
for p in /.whl/ /.gpu-data/; do
    grep -qxF "$p" "$EXCLUDE" || echo "$p" >>"$EXCLUDE"
done

# --- wheels -------------------------------------------------------------------------------------
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo "$2"; }
PKGS=(
    "diffusers==$(version diffusers 0.42.1)"
    "cryptography==$(version cryptography 48.0.0)"
    "cffi==$(version cffi 2.0.0)"
    "pycparser==$(version pycparser 3.0)"
    "rdata==$(version rdata 1.1.0)"
)
rm -rf .whl && mkdir -p .whl   # fresh each time: two versions (or two builds) of one package stop the install
# the oldest glibc first (pip prefers the platforms in the order given); newer ones only where nothing older exists
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in 2_24 2_31 2_34 2_35 2_39; do PLATFORMS+=(--platform "manylinux_${n}_x86_64"); done
echo "downloading: ${PKGS[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${PKGS[@]}"
ls -l .whl

# --- data ---------------------------------------------------------------------------------------
FMNIST_SRC=${EBRU_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
TEXT_SRC=${EBRU_TEXT_DATA:-/usr/local/share/ebru/text}
mkdir -p .gpu-data/fashion-mnist .gpu-data/text
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$FMNIST_SRC/$f.gz" ]; then
        cp -u "$FMNIST_SRC/$f.gz" .gpu-data/fashion-mnist/
    else
        echo "missing $FMNIST_SRC/$f.gz: run 'make data' (or set EBRU_FASHION_MNIST)" >&2
        exit 1
    fi
done
RDATA=janeaustenr/usr/lib/R/site-library/janeaustenr/data
if [ ! -f "$TEXT_SRC/$RDATA/Rdata.rdb" ]; then
    echo "missing $TEXT_SRC/$RDATA: run 'make data' (or set EBRU_TEXT_DATA)" >&2
    exit 1
fi
mkdir -p ".gpu-data/text/$RDATA"
cp -u "$TEXT_SRC/$RDATA"/Rdata.* ".gpu-data/text/$RDATA/"
# the revision, for the result files (the copy on the device may have no .git); "+dirty": uncommitted changes
rev=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src benchmarks 2>/dev/null || rev="$rev+dirty"
echo "$rev" >.gpu-data/REVISION
# the same readers as on the device, pointed at the copies: fails here if a file is wrong
EBRU_FASHION_MNIST=$ROOT/.gpu-data/fashion-mnist EBRU_TEXT_DATA=$ROOT/.gpu-data/text PYTHONPATH=$ROOT/src \
    "$PY" - <<'EOF'
from ebru.data.fashion_mnist import KNOWN_HASHES, FashionMNIST
from ebru.text import load_corpus

for split in ("train", "test"):
    d = FashionMNIST(split)
    assert d.content_hash == KNOWN_HASHES[split], f"Fashion-MNIST {split}: unexpected content hash"
c = load_corpus("austen")
print(f"data ok: Fashion-MNIST train/test hashes match; Austen {len(c.train_text):,} + {len(c.held_out_text):,} chars")
EOF

# --- do the wheels resolve on the device? --------------------------------------------------------
# Each wheel's requirements (no extras, markers for CPython 3.12 on Linux) must be another wheel here or a
# package of the device image (/work/.library/device/KINDS.md, "Python packages already there", 2026-11-17).
"$PY" - <<'EOF'
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
# importlib_metadata: diffusers imports it only on Python < 3.8 (importlib.metadata otherwise)
NOT_NEEDED = {"importlib-metadata"}
# versions of image packages that a wheel pins from below (KINDS.md's pip list)
IMAGE_VERSIONS = {"huggingface-hub": "1.33.0", "safetensors": "0.8.0", "numpy": "2.5.2"}
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
       "os_name": "posix", "platform_machine": "x86_64", "extra": ""}

wheels = sorted(Path(".whl").glob("*.whl"))
have = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
image = {canonicalize_name(n) for n in IMAGE}
bad = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        msg = Parser().parsestr(z.read(meta).decode())
    for line in msg.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue
        name = canonicalize_name(req.name)
        if name in have or name in NOT_NEEDED:
            status = "wheel here" if name in have else "not imported on 3.12"
        elif name in image:
            status = "in the image"
            v = IMAGE_VERSIONS.get(name)
            if v and req.specifier and v not in req.specifier:
                status = f"image has {v}, needs {req.specifier}"
                bad.append(f"{w.name}: {line}")
        else:
            status = "MISSING"
            bad.append(f"{w.name}: {line}")
        print(f"  {w.name.split('-')[0]:<14} needs {line:<44} {status}")
if bad:
    sys.exit("unresolved requirements:\n  " + "\n  ".join(bad))
print(f"wheels resolve: {len(wheels)} wheels, every requirement here or in the device image")
EOF

# --- size of what travels ------------------------------------------------------------------------
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
shared=0
[ -d shared ] && shared=$(du -sb shared | cut -f1)
carry=$(du -sbc .whl .gpu-data | tail -1 | cut -f1)
total=$((tree + shared + carry))
awk -v t="$tree" -v s="$shared" -v c="$carry" -v l="$LIMIT_MIB" 'BEGIN { m = 1048576;
    printf "travels: working tree %.1f MiB + shared %.1f MiB + carry (.whl, .gpu-data) %.1f MiB = %.1f MiB (limit %d)\n",
           t / m, s / m, c / m, (t + s + c) / m, l }'
if [ "$total" -gt $((LIMIT_MIB * 1048576 - 4 * 1048576)) ]; then
    echo "too close to the ${LIMIT_MIB} MiB limit: remove large untracked files first" >&2
    exit 1
fi

cat <<'EOF'

Ready. Check that a GPU is lent (status: can_start_another), then make ONE device call:

  run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".gpu-data"], timeout_s=560)

and unpack what comes back (files_at is in the reply):

  python benchmarks/gpu_collect.py FILES_AT

A CPU rehearsal of the same script, with tiny budgets (15-20 minutes on 2 shared cores):

  OUT=$(mktemp -d) nice -n 10 bash benchmarks/gpu_session.sh --smoke
EOF
