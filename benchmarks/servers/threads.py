"""A thread-per-connection caret server."""

import threading

from blocking import listen, serve

listener = listen()
while True:
    connection, _ = listener.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
