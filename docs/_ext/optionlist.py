"""
The options of a L{twisted.python.usage.Options} as its C{--help} shows
them, for the option list of the documentation (the C{caret-options}
directive of C{caretoptions.py}).

Apart from the directive so that C{tests/test_docs.py} can check every entry
against C{--help} without Sphinx installed.  It is not a general renderer of
options: it knows what C{caretproto.tap.Options} uses.
"""

from __future__ import annotations

from twisted.python import usage


def optionEntries(options: usage.Options) -> list[tuple[str, str]]:
    """
    Each option that C{options} shows in its help, as C{(flags, description)}:
    C{("-p, --port=", "Where to listen: ...")}.  The description is composed
    as Twisted's C{docMakeChunks} composes it for C{--help}: the option's
    documentation, its default, and what its coerce function accepts.
    """
    internal = getattr(options, "internal", frozenset())
    shortOf = {
        long: short
        for short, long in options.synonyms.items()
        if len(short) == 1 and short != long
    }
    entries = []
    for name in sorted(options.longOpt):
        long = name.rstrip("=")
        if long in internal:
            continue
        isParameter = name.endswith("=")
        doc = (options.docs.get(long) or "").strip()
        default = options.defaults.get(long)
        if isParameter and default is not None:
            doc = f"{doc} [default: {default}]"
        dispatch = options._dispatch.get(long)
        if isParameter and isinstance(dispatch, usage.CoerceParameter) and dispatch.doc:
            doc = f"{doc}. {dispatch.doc}"
        flags = f"--{long}=" if isParameter else f"--{long}"
        if long in shortOf:
            flags = f"-{shortOf[long]}, {flags}"
        entries.append((flags, doc))
    return entries
