"""The master process: its loop, the daemon, and what it runs in that loop (senses,
workflows, reflexes, reloads, retention, the watch) or keeps (workers, the pid file).
Nothing here runs user code.
"""
