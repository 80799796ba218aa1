"""Firewall rules between members' loopback addresses, in a chain of our own.

Every rule the harness installs lives in one chain (``KVJEPSEN-127-0-0-11``
for a run whose first member is on 127.0.0.11), jumped to from ``INPUT``.  A
loopback packet from one member to another passes ``INPUT`` once, with the
sender's address as source (members bind their outgoing peer connections to
their own address), so ``-s A -d B -j DROP`` drops exactly what A sends to B.
Clients connect from 127.0.0.1 and are never matched.

Life cycle: :meth:`Firewall.install` first removes leftovers of the same chain
(a crashed earlier run), then creates the chain and the jump; :meth:`block`
replaces the chain's rules; :meth:`heal` flushes them; :meth:`remove` deletes
the jump and the chain and is idempotent.  ``python -m jepsen_like clean``
calls :meth:`remove` for a chain name, so only our own chain is touched.

The rule *building* (:func:`drop_rules`, :func:`chain_name`) is pure, for tests;
running ``iptables`` needs root.  ``iptables -w`` waits for the xtables lock,
so two harnesses on one machine do not trip over each other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "CHAIN_PREFIX",
    "Firewall",
    "FirewallError",
    "chain_name",
    "drop_rules",
    "unavailable_reason",
]

CHAIN_PREFIX = "KVJEPSEN"
_IPTABLES_TIMEOUT = 20.0
_MAX_CHAIN_NAME = 28  # iptables' limit (XT_EXTENSION_MAXNAMELEN - 1)


class FirewallError(Exception):
    """An ``iptables`` command failed; the message holds its command and stderr."""


def chain_name(first_address: str) -> str:
    """The chain of a run whose first member is on ``first_address``."""
    name = f"{CHAIN_PREFIX}-{first_address.replace('.', '-')}"
    if not re.fullmatch(r"[A-Za-z0-9-]+", name) or len(name) > _MAX_CHAIN_NAME:
        raise ValueError(f"cannot derive an iptables chain name from {first_address!r}")
    return name


def drop_rules(chain: str, blocked: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The ``iptables`` arguments appending one DROP rule per blocked direction.

    ``blocked`` holds (source, destination) address pairs: what the source
    sends to the destination is dropped.  Duplicates are dropped once; the
    order is sorted, so the same partition always yields the same rules.
    """
    rules = []
    for src, dst in sorted(set(blocked)):
        if src == dst:
            raise ValueError(f"a member cannot be cut off from itself ({src})")
        rules.append(["-A", chain, "-s", f"{src}/32", "-d", f"{dst}/32", "-j", "DROP"])
    return rules


def unavailable_reason() -> str | None:
    """Why the partition nemesis cannot run here, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "partition nemesis skipped: iptables rules need root (run as root to partition)"
    if shutil.which("iptables") is None:
        return "partition nemesis skipped: iptables is not installed"
    try:
        _run(["-L", "INPUT", "-n"])
    except FirewallError as exc:
        return f"partition nemesis skipped: iptables does not work here ({exc})"
    return None


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["iptables", "-w", "5", *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_IPTABLES_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise FirewallError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass(frozen=True)
class RuleCounter:
    """One DROP rule of the chain and the packets it dropped."""

    source: str
    destination: str
    packets: int


class Firewall:
    """The harness's chain ``chain``.  Blocking calls (run them in a thread from trio)."""

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.installed = False
        self.repairs = 0
        """How often :meth:`block` found the chain or its jump gone and put it back."""

    def exists(self) -> bool:
        return _run(["-n", "-L", self.chain], check=False).returncode == 0

    def install(self) -> None:
        """Remove leftovers of this chain, then create it empty and jump to it from INPUT."""
        self.remove()
        _run(["-N", self.chain])
        self.installed = True
        _run(["-I", "INPUT", "1", "-j", self.chain])

    def ensure_installed(self) -> bool:
        """Create the chain and its jump if either is missing (something else on
        the machine may have flushed the firewall); returns whether it had to."""
        repaired = False
        if not self.exists():
            _run(["-N", self.chain])
            repaired = True
        if _run(["-C", "INPUT", "-j", self.chain], check=False).returncode != 0:
            _run(["-I", "INPUT", "1", "-j", self.chain])
            repaired = True
        self.installed = True
        return repaired

    def block(self, blocked: Iterable[tuple[str, str]]) -> int:
        """Replace the chain's rules by DROP rules for ``blocked``; returns how many.

        Reinstalls the chain and its jump first if they went missing.
        """
        rules = drop_rules(self.chain, blocked)
        self.repairs += self.ensure_installed()
        _run(["-F", self.chain])
        for rule in rules:
            _run(rule)
        return len(rules)

    def heal(self) -> None:
        """Remove every rule from the chain (the jump stays)."""
        if self.exists():
            _run(["-F", self.chain])

    def remove(self) -> bool:
        """Delete the jump from INPUT and the chain, if present.  Idempotent.

        Returns whether anything was removed.
        """
        removed = False
        for _ in range(100):  # one jump per leftover install; bounded anyway
            if _run(["-D", "INPUT", "-j", self.chain], check=False).returncode != 0:
                break
            removed = True
        if self.exists():
            _run(["-F", self.chain])
            _run(["-X", self.chain])
            removed = True
        self.installed = False
        return removed

    def counters(self) -> list[RuleCounter]:
        """The chain's DROP rules with their packet counters (empty if no chain)."""
        done = _run(["-n", "-v", "-x", "-L", self.chain], check=False)
        if done.returncode != 0:
            return []
        return parse_counters(done.stdout)


_RULE_LINE = re.compile(
    r"^\s*(?P<packets>\d+)\s+\d+\s+DROP\s+\S+\s+(?:--\s+)?\S+\s+\S+\s+"
    r"(?P<src>[\d.]+)(?:/32)?\s+(?P<dst>[\d.]+)(?:/32)?"
)


def parse_counters(listing: str) -> list[RuleCounter]:
    """Parse ``iptables -n -v -x -L CHAIN`` output into DROP rule counters."""
    out = []
    for line in listing.splitlines():
        match = _RULE_LINE.match(line)
        if match:
            out.append(RuleCounter(match["src"], match["dst"], int(match["packets"])))
    return out
