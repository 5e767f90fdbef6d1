"""The grid checkpointer (seed 003) on etcd: applications whose parts run on several
hosts, checkpointed together in one consistent global version (two phases, decided by
one etcd transaction) and restarted from it when a host fails.

    agent       one per host (cryo grid agent): starts, checkpoints and restarts parts
    coordinator run, checkpoint, restart, status, watch: what `cryo grid` calls
    keys        the etcd keys and values (docs/protocol.md, "Grid")
    etcd        the client (etcd3gw, over etcd's HTTP/JSON gateway)
"""
