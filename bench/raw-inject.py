#!/usr/bin/env python3
"""A stall-free BGP injector for bgp-fib.sh: listens on LOCAL:179 as AS 65001, takes the SUT's connection,
pre-encodes the prefixes (1000 per UPDATE, one attribute set: ORIGIN IGP, AS_PATH 65001, NEXT_HOP LOCAL)
and writes them in one stream, then End-of-RIB, then answers keepalives until killed.

usage: raw-inject.py LOCAL_IP PREFIX_FILE
Routes only: nothing is ever sent to these addresses.
SIGUSR1 withdraws every prefix (pre-encoded too), SIGUSR2 announces them all again.
"""
import signal, socket, struct, sys, threading, time

local, path = sys.argv[1], sys.argv[2]
AS = 65001
msg = lambda t, b: b'\xff' * 16 + struct.pack('!HB', 19 + len(b), t) + b
caps = b'\x01\x04\x00\x01\x00\x01' + b'\x41\x04' + struct.pack('!I', AS)
opt = bytes([2, len(caps)]) + caps
OPEN = msg(1, struct.pack('!BHH', 4, AS, 90) + socket.inet_aton(local) + bytes([len(opt)]) + opt)
KA = msg(4, b'')
attrs = b'\x40\x01\x01\x00' + b'\x40\x02\x06\x02\x01' + struct.pack('!I', AS) + b'\x40\x03\x04' + socket.inet_aton(local)

def nlri(p):
    a, l = p.split('/'); l = int(l)
    return bytes([l]) + socket.inet_aton(a)[:(l + 7) // 8]

nl = [nlri(line.strip()) for line in open(path) if line.strip()]
stream = bytearray()
for i in range(0, len(nl), 1000):
    stream += msg(2, b'\0\0' + struct.pack('!H', len(attrs)) + attrs + b''.join(nl[i:i + 1000]))
stream += msg(2, b'\0\0\0\0')  # End-of-RIB
withdraw = bytearray()
for i in range(0, len(nl), 900):
    w = b''.join(nl[i:i + 900])
    withdraw += msg(2, struct.pack('!H', len(w)) + w + b'\0\0')

srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((local, 179)); srv.listen(1)
c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def read_msg():
    hdr = b''
    while len(hdr) < 19:
        d = c.recv(19 - len(hdr))
        if not d: raise SystemExit(0)
        hdr += d
    n = struct.unpack('!H', hdr[16:18])[0] - 19; body = b''
    while len(body) < n:
        d = c.recv(n - len(body))
        if not d: raise SystemExit(0)
        body += d
    return hdr[18], body

t, _ = read_msg()            # the SUT's OPEN
c.sendall(OPEN + KA)
while read_msg()[0] != 4:    # until its KEEPALIVE: Established
    pass
lock = threading.Lock()
def send(b):
    with lock:
        c.sendall(b)
def keepalive():
    while True:
        time.sleep(20)
        send(KA)
signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=send, args=(bytes(withdraw),)).start())
signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=send, args=(bytes(stream[:-23]),)).start())
threading.Thread(target=keepalive, daemon=True).start()
send(bytes(stream))
while True:                  # drain the SUT's messages until it closes
    read_msg()
