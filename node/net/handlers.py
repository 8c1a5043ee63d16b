"""pynetdicom's standard logging handlers, unbound where their lines would be dropped.

pynetdicom binds them to every association (its _config.LOG_HANDLER_LEVEL "standard"): for each PDU
and DIMSE message they decode the command set and format a dozen lines for its "pynetdicom" logger
at INFO and DEBUG. The node keeps that logger at WARNING (node.logs), so the lines were built to be
dropped: ~4 % of a listener process's CPU per C-STORE (py-spy, docs/performance.md).
"""

from __future__ import annotations

import logging

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association

_STANDARD_LOG_HANDLERS = ((evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
                          (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
                          (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
                          (evt.EVT_PDU_SENT, standard_pdu_sent_handler))


def drop_unlogged_handlers(assoc: Association) -> None:
    """Unbind pynetdicom's logging handlers from `assoc` when its logger would discard their lines
    (INFO is not enabled); with pynetdicom's logger at INFO or DEBUG they stay."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    for event, handler in _STANDARD_LOG_HANDLERS:
        assoc.unbind(event, handler)
