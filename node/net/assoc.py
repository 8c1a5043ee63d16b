"""Association helpers shared by the listener, the export sender and prior retrieval."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, evt

from node.net.reactor import AssociationSetup, EventAE
from node.net.sockets import nodelay_of

# The DUL thread's nap where it cannot sleep in select() (node.net.reactor: while connecting, or with
# TLS bytes already buffered); pynetdicom's default is 1 ms, which adds up to a millisecond a message.
REACTOR_DELAY_S = 0.0001
# Maximum Length Received the node announces as an SCU (PS3.8 D.1, 0 would mean unlimited). Larger
# P-DATA PDUs mean fewer PDUs, reads and Python calls per instance; peers send at most this much.
SCU_MAX_PDU_BYTES = 1024 * 1024


def tune_association(assoc: Any) -> None:
    """TCP_NODELAY on the association's socket and a short reactor nap (both per association)."""
    nodelay_of(assoc.dul.socket)
    assoc.dul._run_loop_delay = REACTOR_DELAY_S  # noqa: SLF001 - no public knob


def on_open(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler for associations the node requests."""
    tune_association(event.assoc)


def requestor(calling_ae: str, timeout_s: float, contexts: tuple[tuple[str, ...], ...] = (),
              setup: AssociationSetup | None = None) -> AE:
    """An AE for one outgoing association: event-driven reactors (node.net.reactor), large PDUs,
    every timeout at `timeout_s`, and the presentation contexts given as (abstract syntax, transfer
    syntaxes...) tuples; `setup`: see EventAE."""
    ae = EventAE(calling_ae, setup)
    ae.maximum_pdu_size = SCU_MAX_PDU_BYTES
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for abstract, *syntaxes in contexts:
        if syntaxes:
            ae.add_requested_context(abstract, syntaxes)
        else:
            ae.add_requested_context(abstract)
    return ae
