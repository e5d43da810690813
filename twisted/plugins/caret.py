from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

caret = ServiceMaker(
    "caret", "caretproto.tap", "A server for the caret protocol.", "caret"
)

caretEPoll = Reactor(
    "caret-epoll",
    "caretproto.reactor",
    "epoll, each event's log context built for less (caretproto)",
)
