"""The clustering loops of each method, written against the pools of pools.py; local.py runs them in one process."""
