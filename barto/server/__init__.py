"""
bartos: the barto server.
"""
