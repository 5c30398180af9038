"""What runs in a forked worker, after the fork: its end of the channel, the sense and
workflow workers, the bound on moderator calls.
"""
