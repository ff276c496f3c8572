"""
Handlers behind the CLI commands other than C{info}.

Each is one function registered with L{barto.server.cliapi.handler}.
"""
