# Run with: .venv/bin/twistd -n --pidfile= -y examples/caret-and-web.tac
# caret on port 9090 and a small web site on port 8080, in one process.
from twisted.application import service, strports
from twisted.web import resource, server, static

from caretproto import tap

application = service.Application("caret and web")

caretOptions = tap.Options()
caretOptions.parseOptions(["--port", "tcp:9090"])
tap.makeService(caretOptions).setServiceParent(application)

root = resource.Resource()
root.putChild(b"", static.Data(b"caret is on port 9090\n", "text/plain"))
site = server.Site(root)
strports.service("tcp:8080", site).setServiceParent(application)
