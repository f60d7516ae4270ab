"""Every command's --help prints and exits 0 (argparse %-formats help text, so a stray '%' in
a help string, such as a metric's unit, turns --help into a traceback)."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = ["pix3d.train", "pix3d.prepare", "pix3d.synthetic", "pix3d.inspect", "search.run",
            "analysis.table", "analysis.sync", "relpose.train", "benchmarks.bench_learning",
            "benchmarks.bench_train", "benchmarks.device_check"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_prints_and_exits_zero(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out
