"""Every compiled extension has a .pxd and a .pyi beside it, and the .pyi says what the compiled
module really has: mypy's stubtest compares classes, methods, properties, functions and their
parameters against the imported module. Constructors of Cython classes (``__cinit__``) cannot be
introspected, so their parameters are checked by calling them."""
import ast
import importlib
import re
import subprocess
import sys

import pytest

from conftest import ROOT

EXTENSIONS = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                    for p in (ROOT / "engine").rglob("*.pyx"))

# what stubtest cannot see or should not: Cython's own module attributes (pickling support, the
# doctest table) and the constructors, checked by test_constructor_parameters_match_the_stubs
ALLOWLIST = r"""
engine\..*\.__reduce_cython__
engine\..*\.__setstate_cython__
engine\..*\.__test__
engine\.sources\._ring\.Ring\.__buffer__
engine\..*\.__init__
"""


def have_stubtest() -> bool:
    return subprocess.run([sys.executable, "-c", "import mypy.stubtest"],
                          capture_output=True).returncode == 0


def test_every_extension_has_a_pxd_and_a_pyi():
    assert {"engine._fastpath", "engine._reader", "engine._decode",
            "engine.export._encode"} <= set(EXTENSIONS)
    for name in EXTENSIONS:
        base = ROOT.joinpath(*name.split("."))
        for suffix in (".pxd", ".pyi"):
            assert base.with_suffix(suffix).is_file(), f"{name} has no {suffix}"
        importlib.import_module(name)


@pytest.mark.skipif(not have_stubtest(), reason="mypy (stubtest) is not installed")
def test_stubs_match_the_compiled_modules(tmp_path):
    allow = tmp_path / "allowlist.txt"
    allow.write_text(ALLOWLIST)
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--allowlist", str(allow),
                        *EXTENSIONS], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def stub_constructors():
    """(module, class name, parameter names of its stub __init__) for every stub class."""
    for name in EXTENSIONS:
        tree = ast.parse(ROOT.joinpath(*name.split(".")).with_suffix(".pyi").read_text())
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef):
                continue
            init = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
            assert init, f"{name}.{cls.name}: the stub has no __init__"
            args = init[0].args
            assert not (args.vararg or args.kwarg or args.posonlyargs)
            yield name, cls.name, ([a.arg for a in args.args[1:]],
                                   [a.arg for a in args.kwonlyargs])


def call_error(cls, *args, **kwargs) -> str:
    try:
        obj = cls(*args, **kwargs)
    except Exception as e:               # the arguments are nonsense: only the kind of error counts
        return f"{type(e).__name__}: {e}"
    if hasattr(obj, "close"):
        obj.close()
    return ""


@pytest.mark.parametrize("module,cls,params", list(stub_constructors()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_constructor_parameters_match_the_stubs(module, cls, params):
    """The constructor takes exactly as many positional arguments as the stub lists, and accepts
    each parameter, keyword-only ones too, by the stub's name (a name it does not know is
    refused, so this can fail)."""
    positional, keyword_only = params
    kind = getattr(importlib.import_module(module), cls)
    too_many = call_error(kind, *[object()] * (len(positional) + 1))
    m = re.search(r"takes (?:at most|exactly) (\d+) positional argument", too_many)
    assert m and int(m.group(1)) == len(positional), too_many
    assert "unexpected keyword argument" in call_error(kind, no_such_parameter=object())
    for p in positional + keyword_only:
        assert "unexpected keyword argument" not in call_error(kind, **{p: object()}), p
