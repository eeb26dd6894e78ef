"""The service map page: a small aiohttp app the node serves (`capillary up`, compose).

A client of the bus like the CLI, at the CLI's layer (it reuses `capillary walk`'s code): it
connects as the `web` user (subjects.CLIENTS), listens to the node's flows, lists pods and
namespaces, and answers the browser. Flows are aggregated here (hub.py) and only a sample
reaches the page, which says how many it was shown of how many there were.
"""
