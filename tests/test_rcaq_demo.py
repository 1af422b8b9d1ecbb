"""`climbq demo rcaq` (climbq_kernels.methods.rcaq.demo) end to end on a tiny setting."""

import json

from climbq_kernels.methods.rcaq import demo


def test_tiny_demo_writes_table_json_and_plot(tmp_path, capsys):
    status = demo.main(["--quick", "--seeds", "1", "--train", "120", "--test", "150", "--gammas", "0,1",
                        "--timing-sizes", "48,96", "--rate", "3", "--out", str(tmp_path)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| task | gamma | method |" in printed and "log-log slopes" in printed
    result = json.loads((tmp_path / "rcaq.json").read_text())
    assert result["objective_monotone"] is True
    assert {e["method"] for e in result["summary"]} == {"rcaq", "dp"}
    assert len(result["summary"]) == 2 * 2 * 2  # tasks x gammas x methods
    assert [t["n"] for t in result["timing"]] == [48, 96]
    assert set(result["slopes"]) >= {"rcaq_fit_s", "dp_fixed_k_s", "dp_growing_k_s", "ratio_growing_k"}
    assert (tmp_path / "rcaq.png").stat().st_size > 10_000


def test_bad_options_exit_with_usage(capsys):
    import pytest

    with pytest.raises(SystemExit):
        demo.main(["--gammas", "0,2"])
    assert "--gammas" in capsys.readouterr().err
