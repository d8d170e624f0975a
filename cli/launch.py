"""The `gemmaforge` console script. SIGINT and SIGTERM wait while the command line's modules load
(there an interrupt is lost in JAX's gc callback, or turned into an ImportError by an extension
being initialised); `cli.app.main` lets them through once it turns them into a clean exit, and
once the command is over they are ignored."""

import os
import signal
import sys

INTERRUPTED = (130, 143)  # the exit statuses of SIGINT and SIGTERM


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from cli.app import main as run

    try:
        run()
    except SystemExit as stop:
        # The command is over (its outcome is in stop.code): an interrupt now would only cut
        # the interpreter's exit short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stop.code not in INTERRUPTED:
            raise
        # Everything is cleaned up, but an interrupted compilation may still run on JAX's
        # threads, and the interpreter's exit would crash them (SIGSEGV): leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)
