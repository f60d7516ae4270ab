"""Every command's --help prints and exits 0 (argparse %-formats help text, so a stray '%' in
a help string, such as a metric's unit, turns --help into a traceback)."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = ["pix3d.train", "pix3d.prepare", "pix3d.synthetic", "pix3d.inspect", "search.run",
            "analysis.table", "analysis.sync", "relpose.train", "benchmarks.bench_learning",
            "benchmarks.bench_train", "benchmarks.device_check", "analysis.dashboard"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_prints_and_exits_zero(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out
    # Each default said once: never argparse's "(default: None)", never a second one after the help's own.
    options = " ".join(out.split()).split(" -")
    assert "(default: None)" not in out and not [o for o in options if o.count("default") > 1], out
