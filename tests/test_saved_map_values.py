"""One validation of saved maps for both protocols: values, empty files and archives named .npy are one line each."""
import sys as _sys, pathlib as _pathlib; _sys.path.insert(0, str(_pathlib.Path(__file__).parent))
import numpy as np
import pytest

from iapas.cli import main
from test_protocols import tiny  # noqa: F401


def bad_map(path, case):
    if case == "negative":
        np.save(path, np.full((4, 4), -0.2, np.float32))
    elif case == "inf":
        values = np.full((4, 4), 0.5, np.float32)
        values[1, 1] = np.inf
        np.save(path, values)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, map=np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("protocol", ["full", "paper"])
@pytest.mark.parametrize("case, message", [("negative", "outside the metrics' range [0, 1]"),
                                           ("inf", "outside the metrics' range [0, 1]"),
                                           ("empty", "is not a readable .npy file"),
                                           ("npz", "is an .npz archive")])
def test_a_bad_saved_map_is_one_line_under_both_protocols(tiny, tmp_path, capsys, protocol, case, message):
    root, maps = tiny
    path = maps / "part/test/crack/001.npy"
    bad_map(path, case)
    code = main(["eval", "--dataset", "mvtec", "--root", str(root), "--from-maps", str(maps), "-o", str(tmp_path / "o"),
                 "--no-progress", "--protocol", protocol])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"iapas: error: ") and str(path) in lines[0] and message in lines[0]
    assert "internal error" not in lines[0]


def test_both_scorers_refuse_maps_that_cannot_be_ranked(tmp_path):
    from iapas.errors import MetricsInputError
    from iapas.evaluation.protocols import PROTOCOLS

    for protocol in ("full", "paper"):
        scorer = PROTOCOLS.get(protocol).scorer(64, tmp_path / protocol)
        for values in (np.full((4, 4), np.inf), np.full((4, 4), np.nan), np.full((4, 4), -np.inf)):
            with pytest.raises(MetricsInputError):
                scorer.update(values, np.zeros((4, 4), bool), "x.png")
