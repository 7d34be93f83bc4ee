"""Where processes and hosts meet: the rendezvous store (torch.distributed's TCPStore,
its server bound to the address the user names, 127.0.0.1 by default), the board
threads use in its place (a dict), a free port, and the network interface that
routes to the master (gloo's own choice is often 127.0.0.1, which other hosts
cannot reach). The runtime posts reports, failures and the stop signal on the
board (common/transport.py's control plane); a component reads and writes a
store's board through `AnsweringBoard`, since a store on a host cut off would
never answer.
"""
import datetime
import socket
import threading

import torch

from common.transport import PeerFailure, first_line


def interface_towards(address):
    """The local network interface whose address routes to `address` (IPv4), or None.

    gloo picks its interface from the host name, which many machines resolve to
    127.0.0.1: a rank on another host then cannot reach it. The route to the
    master is the interface the other hosts can reach us on.
    """
    import fcntl
    import struct
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((socket.gethostbyname(address), 9))   # UDP: picks a route, sends nothing
            local = probe.getsockname()[0]
            for _, name in socket.if_nameindex():
                request = struct.pack("256s", name[:15].encode())
                try:   # SIOCGIFADDR: the interface's IPv4 address
                    if socket.inet_ntoa(fcntl.ioctl(probe.fileno(), 0x8915, request)[20:24]) == local:
                        return name
                except OSError:
                    continue
    except OSError:
        return None
    return None


def free_port(host="127.0.0.1"):
    """A TCP port that is free on `host` now (bind to port 0 and ask)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class AnsweringBoard:
    """A store's board (TCPStore calls) whose every call waits at most `seconds` for its
    answer, then raises PeerFailure naming the store: what a component is handed."""

    def __init__(self, store, seconds):
        self.store, self.seconds = store, seconds

    def set(self, key, value):
        return answered_within(self.seconds, self.store.set, key, value)

    def get(self, key):
        return answered_within(self.seconds, self.store.get, key)

    def check(self, keys):
        return answered_within(self.seconds, self.store.check, keys)


def answered_within(seconds, ask, *args):
    """ask(*args), a call to a store (check, get, set), waiting at most `seconds`.

    A TCPStore round trip over a link that went down waits until TCP gives up, many minutes:
    neither the store's timeout nor set_timeout bounds it (measured across two network
    namespaces: a `check` still waiting after 90 s with both at 4 s). A `set` needs no answer
    and returns at once, but waits for the lock a stuck call holds. So the question is asked
    in a daemon thread, left waiting if no answer comes: the process can still exit.
    """
    answer = {}

    def ask_and_keep():
        try:
            answer["value"] = ask(*args)
        except BaseException as error:   # handed to the caller
            answer["error"] = error

    asker = threading.Thread(target=ask_and_keep, daemon=True, name="board-question")
    asker.start()
    asker.join(seconds)
    if asker.is_alive():
        raise PeerFailure(f"the rendezvous store (on component_0's host) did not answer for {seconds:g} s "
                          "(that host died or the link to it is down)")
    if "error" in answer:
        raise answer["error"]
    return answer["value"]


# -- the board ----------------------------------------------------------------
class DictBoard:
    """The board for threads: a dict behind a lock, with TCPStore's calls."""

    def __init__(self):
        self.values, self.lock = {}, threading.Lock()

    def set(self, key, value):
        with self.lock:
            self.values[key] = value if isinstance(value, bytes) else str(value).encode()

    def get(self, key):
        with self.lock:
            return self.values[key]

    def check(self, keys):
        with self.lock:
            return all(k in self.values for k in keys)


_LISTENING = []   # the server sockets, alive as long as the process


def connect_store(host, port, is_master, timeout_s):
    """A TCPStore on host:port: the server if is_master, else a client.

    TCPStore's own server listens on every interface; the server here listens
    on `host` only (127.0.0.1 unless the user names another address), through
    a socket bound by us and handed over as master_listen_fd.
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    if not is_master:
        try:
            return torch.distributed.TCPStore(host, port, is_master=False, timeout=timeout)
        except (RuntimeError, TimeoutError) as error:   # c10d's DistNetworkError is a RuntimeError
            raise PeerFailure(f"cannot reach the rendezvous store at {host}:{port} within {timeout_s:g} s "
                              f"({first_line(error)}); is the master up and reachable?") from None
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    _LISTENING.append(listener)
    return torch.distributed.TCPStore(host, port, is_master=True, wait_for_workers=False,
                                      timeout=timeout, master_listen_fd=listener.fileno())
