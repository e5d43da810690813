"""
A thread-pool caret server: 64 threads; connection 65 and later wait, accepted
but unserved, until a thread is free.
"""

from concurrent.futures import ThreadPoolExecutor

from blocking import listen, serve

THREADS = 64

listener = listen()
with ThreadPoolExecutor(THREADS) as pool:
    while True:
        connection, _ = listener.accept()
        pool.submit(serve, connection)
