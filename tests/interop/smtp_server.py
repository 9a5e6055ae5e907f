#!/usr/bin/env python3
"""An independent SMTP peer for easehook's email interop test: aiosmtpd (from
Debian's python3-aiosmtpd) with STARTTLS + AUTH on one port and implicit TLS +
AUTH on another. Every message received is written to OUT_DIR as
`<n>.eml`, with the envelope and the AUTH user in `<n>.json`.

usage: smtp_server.py CERT KEY USER PASSWORD OUT_DIR
prints "READY <starttls_port> <tls_port>" once both listen.
"""
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

cert, key, user, password, out_dir = sys.argv[1:6]
counter = 0


class Handler:
    async def handle_DATA(self, server, session, envelope):
        global counter
        counter += 1
        with open(os.path.join(out_dir, f"{counter}.json.tmp"), "w") as f:
            json.dump(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "auth": session.auth_data.login.decode() if session.authenticated and session.auth_data else None,
                    # STARTTLS sets session.ssl; implicit TLS shows on the transport.
                    "tls": session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None,
                },
                f,
            )
        with open(os.path.join(out_dir, f"{counter}.eml"), "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(os.path.join(out_dir, f"{counter}.json.tmp"), os.path.join(out_dir, f"{counter}.json"))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password:
        return AuthResult(success=True, auth_data=auth_data)
    return AuthResult(success=False, handled=False)


def context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main():
    loop = asyncio.get_running_loop()
    handler = Handler()

    def starttls():
        return SMTP(handler, tls_context=context(), require_starttls=True, auth_require_tls=True,
                    authenticator=authenticator, hostname="interop.test")

    def implicit():
        return SMTP(handler, auth_require_tls=False, authenticator=authenticator, hostname="interop.test")

    s1 = await loop.create_server(starttls, "127.0.0.1", 0)
    s2 = await loop.create_server(implicit, "127.0.0.1", 0, ssl=context())
    p1 = s1.sockets[0].getsockname()[1]
    p2 = s2.sockets[0].getsockname()[1]
    print(f"READY {p1} {p2}", flush=True)
    # Run until the test closes our standard input (or kills us).
    await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
