#!/usr/bin/python3
"""The push channel's throughput figure for ibind's IbkrWsClient (Voyz/ibind), side by side with
bench/push.lua: the same raw server (bench/push_server.lua), the same M messages on one channel,
subscribed as `smd+265598`. Reports messages/s and the process's CPU per message (both threads).
usage: IBIND_DIR=/path/to/ibind python3 bench/ibind_ws.py BASE_URL M   (Debian: python3-websocket,
python3-requests; ibind is not packaged: a checkout of it, only read and run here)"""
import os
import sys
import time

sys.path.insert(0, os.environ["IBIND_DIR"])
import logging  # noqa: E402
logging.disable(logging.CRITICAL if not os.environ.get("IBIND_LOG") else logging.NOTSET)
from ibind import IbkrClient, IbkrWsClient, IbkrWsKey, ibind_logs_initialize  # noqa: E402
if os.environ.get("IBIND_LOG"):
    ibind_logs_initialize(log_to_console=True, log_level="DEBUG")

base, m = sys.argv[1], int(sys.argv[2])
client = IbkrClient(url=base + "/", cacert=False, auto_register_shutdown=False)
ws = IbkrWsClient(ibkr_client=client, url=base.replace("http", "ws", 1) + "/ws", cacert=False,
                  account_id="U1")
qa = ws.new_queue_accessor(IbkrWsKey.MARKET_DATA)
ws.start()
ws.subscribe(channel="md+265598", data={"fields": ["31", "84", "86"]}, needs_confirmation=False)
n, first, cpu0 = 0, None, None
while n < m:
    item = qa.get(block=True, timeout=30)
    if item is None:
        break
    n += 1
    if n == 1:
        first, cpu0 = time.monotonic(), time.process_time()
last, cpu1 = time.monotonic(), time.process_time()
ws.shutdown()
print(f"ibind {n} messages: {(n - 1) / (last - first):.0f} messages/s, "
      f"{(cpu1 - cpu0) / (n - 1) * 1e6:.1f} us CPU per message")
