"""`animate4d keys`: CURVE key pairs for a server, its clients, admins and workers."""

from __future__ import annotations

from pathlib import Path

from animate4d.protocol import keys


def cmd_server(args) -> int:
    d = Path(args.dir)
    public, secret = keys.generate(d, "server")
    for kind in ("clients", "admins", "workers"):
        (d / kind).mkdir(exist_ok=True)
    print(f"server key pair: {secret} (keep private)")
    print(f"server public key: {public} (give it to clients and workers)")
    print(f"allowed public keys go in {d}/clients, {d}/admins and {d}/workers")
    return 0


def cmd_client(args) -> int:
    d = Path(args.dir)
    kind = "admins" if args.admin else "workers" if args.worker else "clients"
    if not (d / "server.key").exists():
        raise keys.KeyFileError(f"{d} has no server.key", hint=f"run `animate4d keys server {d}`")
    out = Path(args.out or d / "issued")
    public, secret = keys.generate(out, args.name)
    allowed = d / kind / public.name
    allowed.write_bytes(public.read_bytes())
    print(f"{args.name}: key pair {secret}; allowed as {kind[:-1]} ({allowed})")
    print(f"give {args.name} these two files: {secret} and {d / 'server.key'}")
    return 0


def add_parsers(sub) -> None:
    k = sub.add_parser("keys", help="make CURVE keys for a server and its clients",
                       description="Encryption and authentication for remote servers.")
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True
    s = ks.add_parser("server", help="make the server's key pair and the allowed-key folders")
    s.add_argument("dir", metavar="DIR")
    s.set_defaults(func=cmd_server)
    c = ks.add_parser("client", help="make a key pair for a client (or admin, or worker) and "
                                     "allow it on the server")
    c.add_argument("dir", metavar="DIR", help="the server's keys folder")
    c.add_argument("name", metavar="NAME")
    role = c.add_mutually_exclusive_group()
    role.add_argument("--admin", action="store_true", help="may see and cancel every job")
    role.add_argument("--worker", action="store_true", help="a worker, not a client")
    c.add_argument("--out", metavar="DIR", help="where to write the pair (default: DIR/issued)")
    c.set_defaults(func=cmd_client)
