"""The public API by resource: each module holds its routers (``ROUTERS``)."""
