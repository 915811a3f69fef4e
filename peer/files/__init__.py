"""The file layer: a content-addressed store on every peer, packing at submission,
fetching and checkouts on workers, outputs and thumbnails back to their owners.

Modules: ``names`` (paths from the network), ``store``, ``manifest``, ``packing``
(BAT), ``shared_storage`` (two-way path variables), ``transfer`` (fetching),
``checkout``, ``outputs`` (outbox and receiver), ``thumbnails``, ``routes`` (HTTP).
"""
