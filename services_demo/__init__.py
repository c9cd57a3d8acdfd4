"""The order saga as four small services: the example to copy.

- ``contract``: the saga's events and its ``SagaContract``, imported by every service and
  by the tracker.
- ``orders``, ``inventory``, ``payment``, ``shipping``: one ``Service`` each, runnable with
  ``choreo run services_demo.<name>:app``.
- ``knobs``: failure injection for demos (declined payments, random failures, a shipping
  step that never answers), read from ``CHOREO_DEMO_*`` environment variables.
- ``workload``, ``audit``, ``report``: the batch of orders a demo places, the checks that
  every unit of stock and money is accounted for, and the closing summary.
- ``embedded``: every service and a tracker in one process on the in-memory transport
  (``choreo demo``); ``multiprocess`` (with ``processes``): each in its own process on
  Kafka and Redis (``scripts/demo-kafka.sh``); ``frontdesk``: placing orders on a running
  deployment and auditing it through the tracker's state API (``docker compose run shop``);
  ``demo``: what ``choreo demo`` runs around ``embedded`` (progress bar, summary).

It imports only choreo's public API: ``choreo`` and ``choreo.testing``, ``choreo.client``,
``choreo.dashboard``, ``choreo.local``; choreo loads ``demo`` by name and never imports it.
"""
