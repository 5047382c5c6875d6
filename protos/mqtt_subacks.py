"""Which subscriptions a broker refused: SUBACKs matched to the SUBSCRIBEs they answer.

Shared by the robot's MQTT transport and the plane's MQTT client. A SUBACK can come
back before ``paho.subscribe()`` has returned its message id, so answers that arrive
first wait here for their subscription.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping

__all__ = ["Subacks"]


class Subacks:
    def __init__(
        self,
        client_id: Callable[[], str],
        counters: MutableMapping[str, int],
        log: logging.Logger,
        on_refused: Callable[[str, int], None] | None = None,
    ) -> None:
        self._client_id = client_id
        self._counters = counters
        self._log = log
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._pending: dict[int, str] = {}
        self._early: dict[int, list[int]] = {}
        self.refused: dict[str, int] = {}
        """Topic filter → the SUBACK reason code the broker refused it with (last seen)."""

    def sent(self, mid: int, topic_filter: str) -> None:
        """`paho.subscribe()` returned `mid` for `topic_filter`."""
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._pending[mid] = topic_filter
        if early is not None:  # the SUBACK beat us back from paho.subscribe()
            self._judge(topic_filter, early)

    def answered(self, mid: int, codes: list[int]) -> None:
        """The broker's SUBACK for `mid` (network thread)."""
        with self._lock:
            topic_filter = self._pending.pop(mid, None)
            if topic_filter is None:
                self._early[mid] = codes
        if topic_filter is not None:
            self._judge(topic_filter, codes)

    def waiting(self) -> bool:
        """Some subscription sent has no answer yet."""
        with self._lock:
            return bool(self._pending)

    def clear(self) -> None:
        """A new client: message ids start again."""
        with self._lock:
            self._pending.clear()
            self._early.clear()

    def _judge(self, topic_filter: str, codes: list[int]) -> None:
        for code in codes:
            if code < 0x80:
                self.refused.pop(topic_filter, None)
                continue
            self._counters["subscriptions_refused"] += 1
            self.refused[topic_filter] = code
            self._log.error(
                "MQTT %s: the broker refused the subscription to %s with reason code "
                "0x%02X; nothing will be received on it (is this identity in the broker's ACL?)",
                self._client_id(),
                topic_filter,
                code,
            )
            if self._on_refused is not None:
                try:
                    self._on_refused(topic_filter, code)
                except Exception:
                    self._log.exception("on_refused hook failed")
