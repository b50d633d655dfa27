"""``infermux serve``: an OpenAI-compatible HTTP server (and a chat page) over any infermux engine.

:mod:`~infermux.serve.wire` checks requests and shapes answers, :mod:`~infermux.serve.app` holds the
routes, :mod:`~infermux.serve.metrics` the Prometheus text, :mod:`~infermux.serve.batcher` gathers
concurrent requests for local engines that cannot stream. aiohttp.web is imported only here, when the
server runs.
"""
