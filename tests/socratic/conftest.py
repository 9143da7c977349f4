from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pvsnp_tree():
    from lmlab.socratic.transcript import load_records, transcript_tree

    return transcript_tree(load_records())
