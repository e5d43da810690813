from twisted.application.service import ServiceMaker

caret = ServiceMaker(
    "caret", "caretproto.tap", "A server for the caret protocol.", "caret"
)
