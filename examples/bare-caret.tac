# Run with: .venv/bin/twistd -n --pidfile= -y examples/bare-caret.tac
# A bare CaretFactory on port 9090: the protocol and nothing more.  What it
# does without (idle timeout, drain, open-files limit, descriptor shortage)
# is in docs/howto/composing.rst.
from twisted.application import service, strports

from caretproto.server import CaretFactory

application = service.Application("bare caret")

factory = CaretFactory()
strports.service("tcp:9090", factory).setServiceParent(application)
