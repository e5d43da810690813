"""A sequential caret server: one client at a time, the rest wait in the backlog."""

from blocking import listen, serve

listener = listen()
while True:
    connection, _ = listener.accept()
    serve(connection)
