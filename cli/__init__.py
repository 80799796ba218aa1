"""kvctl: the command line of kvstore, shaped like etcdctl.

The commands live in small modules (``kv_commands``, ``endpoint``, ``bench``,
``server_command``, ``cluster_command``); ``main`` wires them into one click
group with the global options; ``output`` prints responses as simple text, JSON
or tables; ``errors`` turns every expected failure into one line on stderr.
"""
