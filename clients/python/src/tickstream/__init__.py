"""tickstream: the delivery guarantee of a tickstream server, kept for its user.

Every tick after a subscription's cursor exactly once, in order, across dropped
connections, server and Redis restarts and a switch of node — or a ``Gap`` that says
what was lost. What it promises, and how: README.md beside this package and the
project's docs/PROTOCOL.md §12.

Map of the package:
  client         Client: subscriptions on one socket, reconnects, REST reads
  subscription   Subscription: cursor, continuity check, the buffer ``async for`` reads
  events         Tick, Gap, Candle (what a subscription yields), Cursor (where it stands)
  errors         TickstreamError
  tokens         a fixed token, or a function called again before ``exp``
  link           close codes and refusals as plans, backoff with full jitter, the reconnect loop
  ws, sse        the transports: one multiplexed /ws socket; one /sse stream per subscription
  rest           REST pages, paced and followed
  dataframe      pandas DataFrames (the optional ``pandas`` extra, imported only when asked)
  cli            ``python -m tickstream tail|history|candles|latest``
"""

from .client import Client, ClientState
from .dataframe import to_dataframe  # pandas itself is imported when a frame is asked for
from .errors import TickstreamError
from .events import Candle, Cursor, Event, Gap, Tick
from .link import Backoff, StateInfo
from .rest import Pages
from .subscription import Subscription
from .version import __version__

__all__ = [
    "Backoff",
    "Candle",
    "Client",
    "ClientState",
    "Cursor",
    "Event",
    "Gap",
    "Pages",
    "StateInfo",
    "Subscription",
    "Tick",
    "TickstreamError",
    "__version__",
    "to_dataframe",
]

