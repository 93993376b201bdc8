"""The resumable exec's pump joins the small pieces Docker hands the spoke into chunks of up
to MERGE_BYTES (issue 14), keeping streams apart and in order, and offsets exact (what a
re-attach resumes from). Pure: no Docker, no loop."""

from __future__ import annotations

from spoke.exec_sessions import MERGE_BYTES, _merged


def _log(*items: tuple[str, bytes]) -> list[tuple[int, str, bytes]]:
    out, offset = [], 0
    for stream, data in items:
        out.append((offset, stream, data))
        offset += len(data)
    return out


def test_pieces_of_one_stream_are_joined_up_to_the_limit() -> None:
    piece = b"x" * (MERGE_BYTES // 4)
    got = _merged(_log(*[("stdout", piece)] * 9), 0)
    assert [(s, len(d), end) for s, d, end in got] == [
        ("stdout", MERGE_BYTES, MERGE_BYTES), ("stdout", MERGE_BYTES, 2 * MERGE_BYTES),
        ("stdout", len(piece), 9 * len(piece))]


def test_streams_stay_apart_and_in_order() -> None:
    got = _merged(_log(("stdout", b"ab"), ("stdout", b"c"), ("stderr", b"E"), ("stdout", b"d")), 0)
    assert got == [("stdout", b"abc", 3), ("stderr", b"E", 4), ("stdout", b"d", 5)]


def test_a_resume_mid_piece_starts_at_the_exact_byte() -> None:
    got = _merged(_log(("stdout", b"hello"), ("stdout", b" world")), 3)
    assert got == [("stdout", b"lo world", 11)]


def test_a_piece_larger_than_the_limit_is_left_whole_for_the_sender_to_split() -> None:
    big = b"y" * (MERGE_BYTES + 1)
    assert _merged(_log(("stdout", b"a"), ("stdout", big)), 0) == [
        ("stdout", b"a", 1), ("stdout", big, MERGE_BYTES + 2)]
