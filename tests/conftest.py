import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("FLOWPROBE_SHARED", ROOT.parent / "shared"))
PCAPS = SHARED / "pcaps"


def corpus_files():
    if not PCAPS.is_dir():
        return []
    return sorted(p for p in PCAPS.iterdir()
                  if p.suffix in (".pcap", ".pcapng", ".cap") and p.is_file())


@pytest.fixture(scope="session")
def pcaps_dir():
    if not PCAPS.is_dir():
        pytest.skip(f"development captures not found at {PCAPS}")
    return PCAPS
