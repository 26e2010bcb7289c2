"""The fuzz targets (tools/fuzz/targets.py) over their seeds and every input a fuzzing run found
a problem with (kept in tests/fuzz/TARGET/): none may raise. The coverage-guided runs themselves
are `tools/fuzz.sh TARGET SECONDS` (atheris); this is their regression suite, and it needs no
atheris."""
import pathlib
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools" / "fuzz"))
import run  # noqa: E402
import targets  # noqa: E402

KEPT = ROOT / "tests" / "fuzz"


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_target_over_seeds_and_kept_inputs(name):
    inputs = run.seeds(name)
    assert inputs, f"no seeds for {name}"
    for data in inputs:
        targets.TARGETS[name](data)


def test_kept_inputs_belong_to_a_target():
    for d in KEPT.iterdir():
        assert d.name in targets.TARGETS, d
        assert all(isinstance(p, pathlib.Path) and p.stat().st_size > 0 for p in d.iterdir())


def test_targets_find_what_they_must(monkeypatch):
    """A target is not a no-op: a C TLV decoder that disagrees with the reference is reported."""
    monkeypatch.setattr(targets, "decode_tlv", lambda data: [{"wrong": 1}])
    with pytest.raises(AssertionError):
        targets.tlv(b"\x01\x01\x21\x01\x05\x01")
