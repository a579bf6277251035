"""The enums agree with the C library's names, and the ctypes structs with the C layout."""

import os
import shutil
import subprocess

import pytest

import vramfit
from vramfit import _lib
from conftest import REPO, env_without_preload


@pytest.mark.parametrize("enum_cls", [vramfit.OffloadStrategy, vramfit.LoadingStrategy,
                                      vramfit.DTypePolicy, vramfit.EvictionPolicy, vramfit.Tier,
                                      vramfit.GenerationStep, vramfit.Sampler,
                                      vramfit.PromptSyntax])
def test_enum_names_are_the_c_names(enum_cls):
    for member in enum_cls:
        # The C name is the Python name, lower case, '-' or '_' between words.
        assert member.c_name.replace("-", "_") == member.name.lower(), member
        assert enum_cls.parse(member.c_name) is member
        assert enum_cls.parse(member.name) is member
        assert enum_cls.parse(int(member)) is member


def test_enum_values():
    assert [m.name for m in vramfit.OffloadStrategy] == ["AUTO", "FULL_GPU", "CPU_OFFLOAD",
                                                         "SEQUENTIAL", "STREAM"]
    assert list(vramfit.GenerationStep) == [0, 1, 2]
    assert vramfit.EvictionPolicy.SIZE is vramfit.EvictionPolicy.LARGEST
    assert vramfit.EvictionPolicy.parse("size") is vramfit.EvictionPolicy.LARGEST
    assert vramfit.DTypePolicy.parse("fast") is vramfit.DTypePolicy.FAST
    assert vramfit.OffloadStrategy.parse("cpu_offload") is vramfit.OffloadStrategy.CPU_OFFLOAD


def test_enum_parse_errors_come_from_c():
    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.OffloadStrategy.parse("warp-drive")
    assert e.value.status == vramfit.Status.INVALID_ARG
    assert "warp-drive" in str(e.value)
    with pytest.raises(TypeError):
        vramfit.Tier.parse(1.5)


def test_version():
    assert vramfit.__version__ == vramfit.version()
    assert vramfit.__version__.count(".") == 2


def _fields(cls):
    return [(name, getattr(cls, name).offset) for name, *_ in cls._fields_]


def test_struct_layouts_match_the_header(tmp_path):
    """Compiles a program printing sizeof/offsetof of each mirrored struct and compares."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to check the struct layouts with")
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "vramfit.h"',
             "int main(void) {"]
    for name, cls in _lib.STRUCTS.items():
        lines.append(f'printf("{name} %zu\\n", sizeof({name}));')
        for field, _ in _fields(cls):
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof({name}, {field}));')
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    env = env_without_preload()
    subprocess.run([cc, "-std=c11", "-I", os.path.join(REPO, "include"), str(src), "-o", str(exe)],
                   check=True, env=env)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, env=env).stdout
    c_layout = dict(line.rsplit(" ", 1) for line in out.splitlines())
    py_layout = {}
    for name, cls in _lib.STRUCTS.items():
        py_layout[name] = str(__import__("ctypes").sizeof(cls))
        for field, off in _fields(cls):
            py_layout[f"{name}.{field}"] = str(off)
    assert py_layout == c_layout
