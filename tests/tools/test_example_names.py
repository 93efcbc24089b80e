"""``--example NAME[:SIZE]``: examples named with a size, everywhere an example is accepted."""

from __future__ import annotations

import pytest

from optc.tools import cli, zoo


def test_a_size_in_the_name_picks_that_size():
    assert zoo.check_example("gpt2:full") == ("gpt2", "full")
    assert zoo.check_example("gpt2") == ("gpt2", "small")  # the default size
    assert zoo.options("gpt2:tiny") == zoo.options("gpt2", "tiny")
    model, inputs = zoo.build("bert:tiny")
    assert inputs[0].shape == (1, zoo.options("bert", "tiny")["sequence"])
    assert model(*inputs).shape[-1] == zoo.options("bert", "tiny")["dim"]


def test_unknown_models_and_sizes_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="small, full, tiny"):
        zoo.check_example("gpt2:huge")
    with pytest.raises(ValueError, match="resnet18"):
        zoo.check_example("alexnet")
    with pytest.raises(ValueError, match="names size"):
        zoo.build("gpt2:tiny", size="full")


def test_cli_lists_sizes_and_reports_a_bad_example(capsys, tmp_path):
    assert cli.main(["examples"]) == 0
    assert "gpt2         sizes: small (default), full, tiny" in capsys.readouterr().out
    assert cli.main(["compile", "--example", "vit:huge", "-o", str(tmp_path / "a")]) == cli.EXIT_ERROR
    assert "no size 'huge'" in capsys.readouterr().err
