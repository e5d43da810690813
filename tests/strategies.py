"""
Hypothesis strategies for caret streams: bytes rich in the protocol's
meaningful bytes, and ways to cut a stream into reads.
"""

from __future__ import annotations

from itertools import pairwise

from hypothesis import strategies as st

_pieces = st.one_of(
    st.sampled_from([b"^", b"$", b"^^", b"$$", b"\xff", b"\x00", b"_", b"a"]),
    st.binary(max_size=16),
)

streams = st.lists(_pieces, max_size=40).map(b"".join)
"""Byte strings with many message starts and ends among arbitrary bytes."""


@st.composite
def cuts(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """C{stream} cut into consecutive reads, some of them possibly empty."""
    points = sorted(
        draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12))
    )
    bounds = [0, *points, len(stream)]
    return [stream[start:stop] for start, stop in pairwise(bounds)]


streams_and_cuts = streams.flatmap(
    lambda stream: st.tuples(st.just(stream), cuts(stream))
)
