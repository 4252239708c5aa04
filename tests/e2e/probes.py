"""Small stdlib-only probes, run ON a lab host (python3 is all a lab host has), that speak just
enough of each protocol to prove a security claim from that host's place in the network."""

from __future__ import annotations

# Prints "open", "refused" or "timeout" for a TCP connect to ADDRESS:PORT.
TCP_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("timeout")
"""

# A command in RESP, the Redis protocol (the Redis probes' first lines).
_RESP = """
import os, socket, sys
def resp(*words):
    out = b"*%d\\r\\n" % len(words)
    for word in words:
        data = word.encode()
        out += b"$%d\\r\\n%s\\r\\n" % (len(data), data)
    return out
"""

# Sends one RESP command (argv[3:]) to Redis at ADDRESS:PORT, after AUTH when REDIS_AUTH="user pw"
# is in the environment; prints the first line of each reply.
REDIS_COMMAND = (
    _RESP
    + """
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
reader = conn.makefile("rb")
auth = os.environ.get("REDIS_AUTH")
if auth:
    conn.sendall(resp("AUTH", *auth.split(" ", 1)))
    print(reader.readline().decode().strip())
conn.sendall(resp(*sys.argv[3:]))
line = reader.readline().decode().strip()
if line.startswith("$") and line != "$-1":
    line = reader.readline().decode().strip()
print(line)
"""
)

# An AMQP 0-9-1 handshake with PLAIN credentials USER PASSWORD against ADDRESS:PORT; prints
# "accepted" when the broker goes on to Connection.Tune, "refused" when it closes the connection.
AMQP_LOGIN = """
import socket, struct, sys
address, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = socket.create_connection((address, port), timeout=5)
conn.sendall(b"AMQP\\x00\\x00\\x09\\x01")
def read_frame():
    header = b""
    while len(header) < 7:
        chunk = conn.recv(7 - len(header))
        if not chunk:
            return None
        header += chunk
    kind, channel, size = struct.unpack(">BHI", header)
    body = b""
    while len(body) < size + 1:
        chunk = conn.recv(size + 1 - len(body))
        if not chunk:
            return None
        body += chunk
    return kind, body[:-1]
def shortstr(text):
    data = text.encode()
    return struct.pack(">B", len(data)) + data
def longstr(data):
    return struct.pack(">I", len(data)) + data
start = read_frame()                      # Connection.Start
assert start and start[1][:4] == struct.pack(">HH", 10, 10), start
response = b"\\x00" + user.encode() + b"\\x00" + password.encode()
args = struct.pack(">I", 0) + shortstr("PLAIN") + longstr(response) + shortstr("en_US")
method = struct.pack(">HH", 10, 11) + args  # Connection.StartOk with an empty client table
conn.sendall(struct.pack(">BHI", 1, 0, len(method)) + method + b"\\xce")
try:
    reply = read_frame()
except ConnectionResetError:  # the broker drops the connection of a refused login
    reply = None
print("accepted" if reply and reply[1][:4] == struct.pack(">HH", 10, 30) else "refused")
"""

# The address of the Redis primary that the Sentinel at ADDRESS (port 26379) names for the master
# "deploykit", as REDIS_AUTH="user password" (the application's user may ask that); "none" when it
# names none, "error: ..." when the Sentinel does not answer.
SENTINEL_PRIMARY = (
    _RESP
    + """
try:
    conn = socket.create_connection((sys.argv[1], 26379), timeout=2)
    reader = conn.makefile("rb")
    conn.sendall(resp("AUTH", *os.environ["REDIS_AUTH"].split(" ", 1)))
    reader.readline()
    conn.sendall(resp("SENTINEL", "get-master-addr-by-name", "deploykit"))
    count = int(reader.readline()[1:])
    words = []
    for _ in range(max(count, 0)):
        reader.readline()
        words.append(reader.readline().decode().strip())
    print(words[0] if words else "none")
except OSError as error:
    print("error: %s" % error)
"""
)
