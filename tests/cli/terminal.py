"""Starting the CLI the way a user at a terminal does, whatever started the tests."""

import signal


def default_sigint() -> None:
    """``preexec_fn`` for a CLI child: Ctrl-C at its default disposition.

    A shell starts a background job (`make test &`, `nohup ...`) with SIGINT ignored, the child
    inherits that, and Python then installs no KeyboardInterrupt handler: the Ctrl-C tests would
    test the launcher, not the CLI (they failed that way under `nohup make test &`).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
