"""The core report section labels every configuration the decode benchmark can produce (a missing one crashed
`lmlab reproduce` after the bench gained rows)."""

from lmlab.core.bench import DTYPES
from lmlab.core.reproduce import SHORT


def test_every_bench_configuration_has_a_report_label():
    assert set(DTYPES) <= set(SHORT)


def test_a_crashing_measurement_fails_fast_with_one_line():
    """The child raises (unknown model) and exits; the parent must not wait forever on its queue."""
    import pytest

    from lmlab.core.bench import measure
    from lmlab.core.errors import LmlabError

    with pytest.raises(LmlabError, match="measuring process died"):
        measure("native", "/nonexistent/model", "float32", 1, 2, 1, timeout=120)


def test_one_system_error_of_any_type_keeps_the_report(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from lmlab import cli
    from lmlab.core.report import Section

    def boom(ctx):
        raise KeyError("missing")

    ok = SimpleNamespace(run=lambda ctx: Section("probes", "fine", "ran"))
    mods = {"moe": SimpleNamespace(run=boom), "probes": ok}
    monkeypatch.setattr(cli, "_system_module", lambda system, part: mods.get(system))
    res = CliRunner().invoke(cli.app, ["reproduce", "--only", "moe", "--only", "probes", "--out", str(tmp_path)])
    assert res.exit_code == 1  # a failed section is an error, but the other section is written
    (report,) = tmp_path.glob("*/report.md")
    text = report.read_text()
    assert "KeyError" in text and "ran" in text
