"""check_outputs on paths that are symbolic links: a loop or a broken link is refused up front, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from embeddinggemma.errors import OutputError
from embeddinggemma.files import check_outputs


@pytest.fixture
def links(tmp_path: Path) -> Path:
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere" / "x.npy")
    (tmp_path / "input.txt").write_text("a text\n")
    return tmp_path


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("loop1", r"--output .*loop1 is a symbolic link to nothing \(broken, or a loop\)"),
        ("broken", r"--output .*broken is a symbolic link to nothing"),
        ("loop1/x.npy", r"cannot write --output .*loop1/x\.npy: .*loop1 is a symbolic link to nothing"),
        ("loop1/sub/x.npy", r"cannot write --output .*: .*loop1 is a symbolic link to nothing"),
    ],
)
def test_an_output_through_a_bad_link_is_refused(links: Path, output: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        check_outputs({"--output": links / output}, [links / "input.txt"])


def test_an_input_that_is_a_loop_does_not_break_the_check(links: Path) -> None:
    check_outputs({"--output": links / "out.npy"}, [links / "loop1"])  # the reader names the input, not this check
    with pytest.raises(OutputError, match="is also an input"):
        check_outputs({"--output": links / "loop1"}, [links / "loop1"])
