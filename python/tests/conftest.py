"""Shared fixtures for the Python binding tests.

The package under test is the one beside this folder (python/vramfit); the
library is VRAMFIT_LIB (ctest sets it to the build's libvramfit.so) or what the
package finds on its own. Models:
  - tiny synthesized ones, made once per session by `vramfit synth --preset tiny`
    ($VF_CLI, else the vramfit next to the library); tests needing them skip
    without the command;
  - the reference fixtures under $VF_SHARED/reference (default ../shared beside
    the repository); tests needing them skip where they are absent.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))

import vramfit  # noqa: E402


def _env_without_preload():
    """The environment for child programs: the ASan preload is for Python only."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def _cli_path():
    cli = os.environ.get("VF_CLI")
    if cli and os.path.exists(cli):
        return cli
    beside = os.path.join(os.path.dirname(vramfit.LIBRARY_PATH), "vramfit")
    if os.path.exists(beside):
        return beside
    return shutil.which("vramfit")


@pytest.fixture(scope="session")
def cli():
    path = _cli_path()
    if not path:
        pytest.skip("the vramfit command is not found (set VF_CLI)")
    return path


def run_cli(cli, *args):
    """Runs the vramfit command; its stdout. Fails the test with its stderr on error."""
    p = subprocess.run([cli, *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"vramfit {' '.join(map(str, args))}: exit {p.returncode}: {p.stderr}")
    return p.stdout


@pytest.fixture(scope="session")
def tiny(cli, tmp_path_factory):
    """{"sd15": path, "sd15_f32": path, "sdxl": path}: tiny synthesized models."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, args in (("sd15", ["--arch", "sd15"]), ("sd15_f32", ["--arch", "sd15", "--dtype", "f32"]),
                       ("sdxl", ["--arch", "sdxl"])):
        run_cli(cli, "synth", *args, "--preset", "tiny", "--output", root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="session")
def reference():
    """$VF_SHARED/reference, or skip."""
    shared = os.environ.get("VF_SHARED") or os.path.join(REPO, "..", "shared")
    ref = os.path.join(shared, "reference")
    if not os.path.isdir(os.path.join(ref, "tiny-sd15", "diffusers")):
        pytest.skip(f"reference fixtures not found under {ref} (set VF_SHARED)")
    return ref


# ---- file readers for checking outputs -----------------------------------------------


def read_safetensors(path):
    """{name: (shape, list of floats)} for the F32 tensors of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        count = (b - a) // 4
        out[name] = (t["shape"], struct.unpack_from(f"<{count}f", data, base + a))
    return out


def read_png(path):
    """(width, height, rgb bytes, {text key: value}) of an 8-bit RGB non-interlaced PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, texts = 8, b"", {}
    w = h = None
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, ctype, interlace) == (8, 2, 0), f"{path}: not 8-bit RGB"
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            k, v = body.split(b"\0", 1)
            texts[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"iTXt":
            k, rest = body.split(b"\0", 1)
            comp, rest = rest[0], rest[2:]
            _lang, rest = rest.split(b"\0", 1)
            _tkey, v = rest.split(b"\0", 1)
            texts[k.decode("latin-1")] = (zlib.decompress(v) if comp else v).decode("utf-8")
    raw = zlib.decompress(idat)
    stride = w * 3
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - 3] if x >= 3 else 0
            b = prev[x]
            c = prev[x - 3] if x >= 3 else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, b"".join(rows), texts


env_without_preload = _env_without_preload
