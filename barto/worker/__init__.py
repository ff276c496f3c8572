"""
bartoc: the barto worker.
"""
