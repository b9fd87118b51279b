"""Lesson 08's network of namespaces, seen from a check: what is left of it, a slow or lossy link.

lessons/08_cluster/hosts.sh makes the network (namespaces ws08-*, veth
pairs, the bridge ws08br on 10.231.8.0/24) and removes it; these helpers
only look at it and change one link's behaviour. Everything needs root.

    python -m workshop.netns slow DEV     100 ms more on DEV (tc netem), or 64 kbit/s where the kernel has no netem
    python -m workshop.netns lossy NS PCT drop PCT % of the packets NS receives (nft)
    python -m workshop.netns clear DEV NS undo both
    python -m workshop.netns left         what is left of the network (nothing after a run)
"""

from __future__ import annotations

import json
import subprocess
import sys

PREFIX = "ws08"     # every namespace and link hosts.sh makes is named ws08...
BRIDGE = "ws08br"


def ip(*args: str, check: bool = True) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check).stdout


def in_ns(ns: str, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
    """Run cmd inside namespace ns (its interfaces, this machine's files)."""
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, **kwargs)


def leftovers() -> dict[str, list]:
    """Namespaces, links and processes of the lesson's network that still exist."""
    namespaces = [line.split()[0] for line in ip("netns", "list").splitlines()
                  if line.startswith(PREFIX)]
    links = [link["ifname"] for link in json.loads(ip("-j", "link", "show") or "[]")
             if link["ifname"].startswith(PREFIX)]
    pids = sorted({pid for ns in namespaces for pid in ip("netns", "pids", ns, check=False).split()})
    return {"namespaces": namespaces, "links": links, "pids": pids}


def slow(dev: str, delay_ms: int = 100) -> str:
    """Make the link slower on its way out of dev; say how.

    tc netem adds delay_ms to every packet. Some kernels (small VMs') lack
    netem: then tbf limits the link to 64 kbit/s, at which the TLS
    handshake and request that cross it take a few hundred ms, the cost of
    a few round trips of 100 ms.
    """
    netem = subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                            f"{delay_ms}ms"], capture_output=True, text=True)
    if netem.returncode == 0:
        return f"netem delay {delay_ms}ms"
    subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", "64kbit",
                    "burst", "1540", "latency", "5s"], check=True, capture_output=True, text=True)
    return f"tbf rate 64kbit (this kernel has no netem: {netem.stderr.strip()})"


def lossy(ns: str, percent: int) -> None:
    """Drop percent % of the packets that reach namespace ns, at random (nftables' numgen)."""
    rules = ("table inet ws08_loss {\n chain input {\n  type filter hook input priority 0;\n"
             f"  numgen random mod 100 < {percent} drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True)


def clear(dev: str, ns: str | None = None) -> None:
    """Back to a plain link: no qdisc of ours on dev, no loss rule in ns."""
    subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
    if ns:
        in_ns(ns, "nft", "delete", "table", "inet", "ws08_loss")


def main(argv: list[str]) -> int:
    match argv:
        case ["slow", dev]:
            print(slow(dev))
        case ["lossy", ns, percent]:
            lossy(ns, int(percent))
        case ["clear", dev, *ns]:
            clear(dev, *ns[:1])
        case ["left"]:
            print(json.dumps(leftovers()))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
