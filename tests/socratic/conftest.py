from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def pvsnp_tree():
    from lmlab.socratic.transcript import load_records, transcript_tree

    return transcript_tree(load_records())
