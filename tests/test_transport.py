"""The wire format of async_mach's links: data only, checked before use, never executed."""
import os
import pickle
import threading

import pytest
import torch

from common import transport
from common.transport import BadMessage, decode, encode


def test_round_trip_keeps_every_field_and_tensor():
    message = {"kind": "answer", "key": 7, "src": 2, "depth": None, "ok": True, "lr": 0.5,
               "emb": torch.randn(4, 3), "ids": torch.arange(5), "none": torch.empty(0, 3)}
    back = decode(encode(message))
    assert back.keys() == message.keys()
    for name, value in message.items():
        if torch.is_tensor(value):
            assert back[name].dtype == value.dtype and torch.equal(back[name], value)
        else:
            assert back[name] == value and type(back[name]) is type(value)


def test_a_pickle_payload_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in (pickle.dumps(Exploit()), pickle.dumps({"kind": "beat"}, protocol=5)):
        with pytest.raises(BadMessage):
            decode(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    assert not marker.exists()


def corrupt(message, change):
    data = bytearray(encode(message).numpy().tobytes())
    return torch.frombuffer(bytearray(change(data)), dtype=torch.uint8)


@pytest.mark.parametrize("change", [
    lambda d: d[:-3],                                        # truncated tensor bytes
    lambda d: d + b"xx",                                     # bytes after the last tensor
    lambda d: d[:4] + b"}" + d[5:],                          # header is no longer JSON
    lambda d: (999).to_bytes(4, "big") + d[4:],              # header length past the payload
    lambda d: b"\x00\x00",                                   # no room for a header length
    lambda d: d.replace(b'"float32"', b'"object!"'),         # a dtype that does not travel
    lambda d: d.replace(b'"key": 1', b'"key": [1]'),         # a field that is not a scalar
])
def test_malformed_payloads_are_refused(change):
    with pytest.raises(BadMessage):
        decode(corrupt({"kind": "grad", "key": 1, "grad": torch.ones(2, 2)}, change))


def test_encode_refuses_what_cannot_travel():
    with pytest.raises(TypeError, match="does not travel"):
        encode({"kind": "spike", "ids": [1, 2, 3]})
    with pytest.raises(TypeError, match="do not travel"):
        encode({"kind": "spike", "x": torch.zeros(2, dtype=torch.complex64)})


class FakeGloo:
    """Stands in for torch.distributed: delivers the given payloads, each from rank 1."""

    def __init__(self, payloads):
        self.payloads, self.pending = list(payloads), None

    def irecv(self, tensor, src=None):
        gloo = self

        class Work:
            def wait(self, timeout=None):
                if src is None:   # the length of the next payload
                    gloo.pending = gloo.payloads.pop(0)
                    tensor[0] = gloo.pending.numel()
                else:
                    tensor.copy_(gloo.pending)

            def _source_rank(self):
                return 1
        return Work()


def test_the_receiver_counts_and_drops_what_does_not_parse_and_trusts_gloo_for_the_sender():
    bad = torch.frombuffer(bytearray(pickle.dumps({"kind": "beat"})), dtype=torch.uint8)
    good = encode({"kind": "bye", "src": 5})   # a sender that claims to be rank 5
    receiver = transport.GlooTransport.__new__(transport.GlooTransport)
    receiver.dist, receiver.timeout_s, receiver.error, receiver.bad_messages = FakeGloo([bad, good]), 1, None, 0
    receiver.inbox, receiver.last_kind, receiver.finals_left = transport._Inbox(0, 0, 0), "bye", 1
    thread = threading.Thread(target=receiver._receive_loop)
    thread.start()
    thread.join(5)
    assert not thread.is_alive() and receiver.error is None
    assert receiver.bad_messages == 1 and receiver.inbox.get(0) == {"kind": "bye", "src": 1}
