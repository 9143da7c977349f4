"""The core report section labels every configuration the decode benchmark can produce (a missing one crashed
`lmlab reproduce` after the bench gained rows)."""

from lmlab.core.bench import DTYPES
from lmlab.core.reproduce import SHORT


def test_every_bench_configuration_has_a_report_label():
    assert set(DTYPES) <= set(SHORT)
