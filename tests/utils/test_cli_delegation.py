"""``mesanet synth | needle | mesaopt`` hand their arguments, options included, to the pipeline's own ``main``."""

from __future__ import annotations

import pytest

from mesanet import cli


@pytest.mark.parametrize("command", sorted(cli.DELEGATED))
def test_delegated_help_reaches_the_pipeline_parser(command, capsys):
    with pytest.raises(SystemExit) as info:  # argparse's --help exits 0 after printing the pipeline's own usage
        if command == "mesaopt":
            raise SystemExit(cli.main([command, "--help"]))
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and ("--quick" in out or "--lengths" in out or "analyses:" in out)


def test_delegated_errors_are_exit_code_2(capsys):
    assert cli.main(["mesaopt", "no-such-analysis"]) == 2
    assert "no-such-analysis" in capsys.readouterr().err
