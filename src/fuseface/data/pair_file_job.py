"""Parse an IJB pair file in a helper process while the caller pools template features.

The IJB-C pair file has 15.66 M ``t1 t2 label`` lines; ``np.fromstring`` parses it in about
2 s on one core and holds the GIL throughout, so a thread cannot overlap it with other work. The
1:1 evaluation needs the pairs only after the template features are pooled (another 2-4 s of
single-threaded numpy), so :class:`PairFileJob` starts ``python -m fuseface.data.pair_file_job SRC
OUT`` (numpy only, one thread), which writes the parsed (P, 3) int64 table as one ``.npy``; the
caller maps it read-only with :meth:`PairFileJob.result` (no copy: the pages are already in the
page cache). A helper does not write the protocol cache of
:func:`fuseface.data.ijb.read_pair_file` (its parse is hidden anyway); an existing cache entry is
read in this process instead of starting a helper.

Nothing is lost when the helper cannot run or fails: :meth:`PairFileJob.result` then parses the file
in this process, which raises the reader's own error naming the file and the first bad line.
Small files (under ``min_bytes``) and cached files are never sent to a helper.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BACKGROUND_MIN_BYTES = 20_000_000  # below this the helper's start-up (~0.2 s) is not worth it


class PairFileJob:
    """A pair file being read; :meth:`result` returns ``(t1 int64, t2 int64, labels int8)``."""

    def __init__(self, path: str | Path, *, cache: bool = True, min_bytes: int = BACKGROUND_MIN_BYTES) -> None:
        from fuseface.data.ijb import _cache_file, _require

        self.path = Path(path)
        _require(self.path)
        self._cache = cache
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Path | None = None
        cfile = _cache_file(self.path, cache)
        if self.path.stat().st_size < min_bytes or (cfile is not None and cfile.is_file()):
            return  # read in this process by result()
        try:
            fd, out = tempfile.mkstemp(prefix="fuseface-pairs-", suffix=".npy")
            os.close(fd)
            self._out = Path(out)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fuseface.data.pair_file_job", str(self.path), str(self._out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                # ``-m`` puts the working directory first on sys.path: run where this very
                # fuseface package is found, not wherever the caller happens to be
                cwd=Path(__file__).resolve().parents[2],
            )
        except OSError:
            self._discard()
            self._proc = None

    @property
    def in_background(self) -> bool:
        """Whether a helper process is parsing the file."""
        return self._proc is not None

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Wait for the helper and return its arrays (or parse here when it did not succeed).

        From a helper, ``t1`` and ``t2`` are read-only int64 column views of the mapped table."""
        from fuseface.data.ijb import read_pair_file

        if self._proc is None:
            return read_pair_file(self.path, cache=self._cache)
        proc, self._proc = self._proc, None
        try:
            table = None
            if proc.wait() == 0:
                assert self._out is not None
                try:
                    table = np.load(self._out, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError):
                    table = None
            if table is None or table.ndim != 2 or table.shape[1] != 3:
                return read_pair_file(self.path, cache=self._cache)
            return table[:, 0], table[:, 1], np.asarray(table[:, 2], dtype=np.int8)
        finally:
            self._discard()

    def _discard(self) -> None:
        if self._out is not None:
            # a mapped file lives on until it is unmapped (POSIX); Windows refuses while it is
            # mapped, and the temp-file cleaner gets it later
            with contextlib.suppress(OSError):
                self._out.unlink(missing_ok=True)
            self._out = None

    def __del__(self) -> None:  # an abandoned job: stop the helper and remove its file
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if getattr(self, "_out", None) is not None:
            self._discard()


def main(argv: list[str] | None = None) -> int:
    """Helper entry point: ``SRC OUT``; exit status 0 on success, 2 on a malformed file."""
    from fuseface.data.ijb import _parse_pair_table
    from fuseface.errors import ProtocolFileError

    src, out = (argv if argv is not None else sys.argv[1:])[:2]
    try:
        table = _parse_pair_table(Path(src))
    except ProtocolFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    np.save(out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
