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


def test_decode_bench_keeps_the_other_rows_when_one_configuration_crashes(tmp_path, monkeypatch):
    """llama.cpp's child segfaulted on a Sapphire Rapids host and `bench decode` used to exit, losing every row."""
    import json

    from lmlab.core import bench
    from lmlab.core.errors import LmlabError

    def fake(impl, model, dtype, batch, new_tokens, repeats):
        if impl == "llama.cpp":
            raise LmlabError("bench llama.cpp llama.cpp batch 1: the measuring process died (exit code -11)")
        return {"tokens_per_s": 20.0 if impl == "hf" else 40.0, "peak_rss_mb": 1.0, "kernels": "x"}

    monkeypatch.setattr(bench, "resolve", lambda model: model, raising=False)
    monkeypatch.setattr("lmlab.core.loader.resolve", lambda model: model)
    monkeypatch.setattr(bench, "measure", fake)
    out = tmp_path / "rows.json"
    pairs = [("float32", "float32"), ("llama.cpp", "float32"), ("q4", "float32")]
    rows = bench.run_decode_bench("m", [1], 4, 1, out, pairs=pairs)
    assert [r["native_dtype"] for r in rows] == ["float32", "llama.cpp", "q4"]
    assert "exit code -11" in rows[1]["skipped"] and rows[2]["speedup_vs_hf"] == 2.0
    assert json.loads(out.read_text()) == rows
