"""mypy on the public API: the extension's .pyi stub and the registry, used the way a Python
consumer uses them (a wrong call in the snippet must be caught, so the stub is not just Any)."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

USES = '''
import numpy as np
from engine._fastpath import META_DTYPE, FlowTable, sizes
from engine._reader import PcapReader
from engine.fields import RECORD_DTYPE, lookup, records_to_dicts

def flows(path: str) -> list[dict]:
    table = FlowTable(max_flows=1024, idle_timeout=30.0, lifetime=120.0, features=True)
    meta = np.zeros(4096, dtype=META_DTYPE)
    out: list[dict] = []
    with PcapReader(path) as reader:
        while (n := reader.next_batch(meta)):
            i = 0
            while i < n:
                i = table.process(reader.buffer, meta[:n], i)
                out += records_to_dicts(table.take())
    while not table.flush():
        out += records_to_dicts(table.take())
    bytes_per_flow: int = sizes()["flow"]
    assert lookup("IN_BYTES").v9 == 1 and RECORD_DTYPE.itemsize > bytes_per_flow
    return out + records_to_dicts(table.take())
'''
WRONG = USES + '''
def wrong() -> None:
    FlowTable(max_flows="many")
    PcapReader(42)
'''


def mypy(tmp_path, text):
    path = tmp_path / "uses.py"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                           "--ignore-missing-imports", "--no-error-summary", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.skipif(shutil.which("mypy") is None and
                    subprocess.run([sys.executable, "-m", "mypy", "--version"],
                                   capture_output=True).returncode != 0,
                    reason="mypy is not installed")
def test_public_api_type_checks(tmp_path):
    ok = mypy(tmp_path, USES)
    assert ok.returncode == 0, ok.stdout
    bad = mypy(tmp_path, WRONG)
    assert bad.returncode != 0
    assert 'Argument "max_flows" to "FlowTable" has incompatible type "str"' in bad.stdout
    assert '"PcapReader" has incompatible type "int"' in bad.stdout
