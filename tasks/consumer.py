"""The workers' consumer: Celery's, made to survive a broker that goes away.

Found by tests/test_faults.py and reproduced by tests/test_engine_broker_loss.py:
with the Redis transport (celery/kombu 5.7), a worker holding an
unacknowledged message when the broker connection dies (a running
``acks_late`` refresh, or a message received but not yet started) exits with
"Unrecoverable error: AttributeError: 'NoneType' object has no attribute
'hostname'" (or ``'client'``). Celery first collects the dead connection,
which drops the transport's client, and then closes it; closing the channel
restores the unacknowledged messages through a client rebuilt from the
dropped one, and so does the late acknowledgement of a task that finishes
after the loss. AttributeError is not a connection error, so the worker gives
up. Under `make up` nothing restarts it: its queues stop being served.

Here, once the connection is known dead, its channels stop talking to the
broker: no restore at close, and acknowledging or rejecting one of their
messages only forgets it locally. The worker reconnects as for any broker
loss and a running refresh carries on (its transaction and locks do not
depend on the broker). Such a message stays in the broker's unacknowledged
index and is delivered again after the visibility timeout, where the refresh
lock and bookkeeping make the second run harmless (a sweep refresh skips as a
duplicate); if the broker came back empty it is gone, and the requests kept
in Postgres bring the next sweep's refresh.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport.virtual.base import QoS as VirtualQoS

log = logging.getLogger(__name__)


def _forget_locally(qos: Any) -> None:
    """Make a dead channel's QoS stop reaching the broker (virtual transports only)."""
    qos.restore_at_shutdown = False
    qos.ack = lambda delivery_tag: VirtualQoS.ack(qos, delivery_tag)
    qos.reject = lambda delivery_tag, requeue=False: VirtualQoS.ack(qos, delivery_tag)


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        transport = getattr(self.connection, "transport", None) if self.connection else None
        dead = 0
        for channel in list(getattr(transport, "channels", None) or []):
            qos = getattr(channel, "_qos", None)  # set on virtual (Redis) channels that consumed
            if isinstance(qos, VirtualQoS):
                dead += len(qos._delivered)
                _forget_locally(qos)
        if dead:
            log.warning("broker connection lost with %d unacknowledged message(s): they stay in the broker "
                        "and are delivered again after the visibility timeout", dead)
        super().on_connection_error_after_connected(exc)
