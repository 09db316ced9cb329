"""The CLI's one place for expected failures: malformed tables through fit and report, one line, exit 2."""

from __future__ import annotations

import pytest

from experiments.cli import main

HEADER = ("run_id,objective,attention,model,params,non_embedding_params,unique_tokens,epochs,tokens_seen,flops,"
          "val_loss,seed")
ROW = "r1,ar,dense,tiny,200,100,1000,{epochs},{seen},{flops},{loss},0"


def good_row(epochs: float = 2, loss: str = "5.0") -> str:
    return ROW.format(epochs=epochs, seen=int(1000 * epochs), flops=6 * 100 * 1000 * epochs, loss=loss)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    (HEADER + "\n", "no rows"),
    (HEADER.replace(",val_loss", "") + "\n" + good_row().rsplit(",", 2)[0] + ",0\n", "val_loss"),
    (HEADER + "\n" + good_row(loss="nan") + "\n", "val_loss"),
    (HEADER + "\n" + good_row(loss="inf") + "\n", "val_loss"),
    (HEADER + "\n" + good_row(loss="low") + "\n", "val_loss"),
    (HEADER + "\n" + good_row().replace(",2,2000,", ",two,2000,") + "\n", "epochs"),
])
@pytest.mark.parametrize("verb", ["fit", "report"])
def test_malformed_tables_are_one_line_exit_2(tmp_path, capsys, text, fragment, verb):
    path = tmp_path / "results.csv"
    path.write_text(text)
    args = [verb, str(path)] + (["--out", str(tmp_path / "rep")] if verb == "report" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"crossover {verb}: error:") and fragment in err[0], err
    assert not (tmp_path / "rep").exists()


def test_a_run_named_nan_and_fractional_epochs_are_fine(tmp_path, capsys):
    path = tmp_path / "results.csv"
    rows = [good_row(e).replace("r1,", "nan,", 1) for e in (0.5, 1.25, 2)]
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    assert main(["fit", str(path), "--bootstrap", "0"]) == 0
    assert '"attention"' in capsys.readouterr().out
