"""Shared helpers for ebru's benchmark scripts: machine description, result files, peers."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import types
from pathlib import Path

import torch

# Result files go to benchmarks/results/, or to $EBRU_RESULTS_DIR when set (benchmarks/gpu_session.sh sets it, so
# a run on a lent machine, or its CPU smoke test, never writes over the committed results).
RESULTS = Path(os.environ.get("EBRU_RESULTS_DIR") or Path(__file__).resolve().parent / "results")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously): call it on both sides of a timing."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine() -> dict:
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu_memory_gib": round(props.total_memory / 2**30, 1), "gpu_sms": props.multi_processor_count,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        info["ebru_revision"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["ebru_revision"] = None
    if not info["ebru_revision"]:  # a copy of the tree without .git (a lent GPU): gpu_session.sh passes it on
        info["ebru_revision"] = os.environ.get("EBRU_REVISION") or None
    return info


def write_result(name: str, summary: dict, **extra) -> Path:
    """Write ``benchmarks/results/<name>.json`` with ``summary``, ``machine`` and any extra fields."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    record = {"summary": summary, "machine": machine(), **extra}
    tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def load_kdiffusion_sampling():
    """Import k-diffusion's ``sampling.py`` alone.

    The k-diffusion package's ``__init__`` imports torchvision, clean-fid and wandb,
    which do not install beside the offline CPU torch. Its samplers need only
    ``utils.append_dims`` from the package, provided here. Install the peer with
    ``pip install --no-deps k-diffusion==0.1.1.post1 torchdiffeq torchsde scipy``.
    """
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("k-diffusion is not installed: pip install --no-deps k-diffusion==0.1.1.post1 && "
                 "pip install torchdiffeq torchsde scipy")
    root = Path(next(iter(spec.submodule_search_locations)))
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    s = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
    mod = importlib.util.module_from_spec(s)
    sys.modules["k_diffusion.sampling"] = mod
    try:
        s.loader.exec_module(mod)
    except ImportError as e:
        sys.exit(f"k-diffusion's sampling.py needs {e.name}: pip install torchdiffeq torchsde scipy")
    return mod
