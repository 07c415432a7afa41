"""papermill, with the kernel's replies read in short polls:

    python -m tvmlib.apps.papermill_run IN.ipynb OUT.ipynb [papermill options]   # make notebooks

Here (papermill 2.7, nbclient 0.11, jupyter_client 8.10, pyzmq 27.3, ipykernel 7.4) plain
papermill hung in 3 of 8 runs of notebook 07's first ten cells, right after its first widget cell:
the kernel had sent its reply and gone idle, but the client's ``await socket.poll()`` without a
timeout never woke (nbclient issue 312 reports the same symptom). With pyzmq 26.4 it hung in 3 of
8, with ipykernel 6.29 in 7 of 10. Polling in half-second slices picks the waiting message up on
the next slice: 0 of 16 runs hung. Everything else is papermill's own command line.
"""

from __future__ import annotations

from queue import Empty

from jupyter_client.channels import AsyncZMQSocketChannel

SLICE_S = 0.5
_get_msg = AsyncZMQSocketChannel.get_msg


async def get_msg_in_slices(self: AsyncZMQSocketChannel, timeout: float | None = None) -> dict:
    """``AsyncZMQSocketChannel.get_msg`` that polls at most ``SLICE_S`` at a time, so a missed
    wake-up costs half a second instead of the run; raises ``queue.Empty`` after ``timeout``
    seconds (None: never)."""
    waited = 0.0
    while timeout is None or waited < timeout:
        step = SLICE_S if timeout is None else min(SLICE_S, timeout - waited)
        try:
            return await _get_msg(self, step)
        except Empty:
            waited += step
    raise Empty


def main() -> None:
    from papermill.cli import papermill

    AsyncZMQSocketChannel.get_msg = get_msg_in_slices
    papermill()


if __name__ == "__main__":
    main()
