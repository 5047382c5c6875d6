"""The suite's own real servers start, answer and stop (the base of every integration test)."""

from __future__ import annotations

import pytest

from tests.servers import Postgres, port_open, run_mosquitto, wait_until

pytestmark = pytest.mark.services


def test_postgres_accepts_queries(postgres: Postgres) -> None:
    import psycopg

    url_db = "smoke"
    postgres.create_database(url_db)
    with psycopg.connect(
        host=postgres.host, port=postgres.port, user=postgres.user, dbname=url_db
    ) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)


def test_mosquitto_delivers_a_qos1_message() -> None:
    import queue

    import paho.mqtt.client as mqtt

    with run_mosquitto() as broker:
        got: queue.Queue[bytes] = queue.Queue()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="smoke-sub")
        sub.on_message = lambda c, u, m: got.put(m.payload)
        sub.connect(broker.host, broker.port)
        sub.subscribe("edgeflux/v1/smoke", qos=1)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="smoke-pub")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            wait_until(lambda: sub.is_connected() and pub.is_connected(), 10, "clients")
            info = pub.publish("edgeflux/v1/smoke", b"hello", qos=1)
            info.wait_for_publish(timeout=5)
            assert got.get(timeout=5) == b"hello"
        finally:
            for c in (pub, sub):
                c.loop_stop()
                c.disconnect()
        port = broker.port
    wait_until(lambda: not port_open(port), 10, "Mosquitto to stop")
