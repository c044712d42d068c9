"""The old layout's state copied out of a Docker container with ``docker cp`` (a tar stream).

An older version kept sessions and tokens in the container's home; before such a sandbox is
replaced, ``state.persist`` copies them out through the runtime (``created_home``,
``open_for_copy``, ``copy_out``). ``docker cp`` works on a stopped container too.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from openwork_sandbox.core import processes
from openwork_sandbox.core.errors import WorkflowError


def copy_out(container: str, guest_dir: str, stage: Path, unit: str) -> list:
    """``docker cp container:guest_dir/unit -`` (a tar stream, read as it comes) into ``stage/unit``:
    the kept files (``state.persist.is_kept``) as ``write_staged`` records them. A container
    without that folder copies nothing (``[]``); any other failure is a one-line WorkflowError."""
    from openwork_sandbox.state.persist import is_kept, read_chunks, write_staged

    src = str(PurePosixPath(guest_dir) / unit)
    copied = []
    top = PurePosixPath(unit).name
    with processes.stream_bytes(["docker", "cp", f"{container}:{src}", "-"], check=False) as cp:
        try:
            with tarfile.open(fileobj=cp.stdout, mode="r|") as tar:
                for member in tar:
                    name = PurePosixPath(member.name)
                    parts = name.parts[1:] if name.parts and name.parts[0] == top else name.parts
                    rel = str(PurePosixPath(unit, *parts))
                    if not is_kept(rel) or ".." in parts:
                        continue
                    if member.isdir():
                        (stage / rel).mkdir(parents=True, exist_ok=True)
                    elif member.isfile():
                        fh = tar.extractfile(member)
                        copied.append(
                            write_staged(
                                stage,
                                rel,
                                read_chunks(fh),
                                member.mode,
                                float(member.mtime),
                                expected_size=member.size,
                                source=f"{src} from {container}",
                            )
                        )
        except tarfile.ReadError:
            pass  # no tar at all: docker cp failed, see below
    err, code = cp.stderr.decode(errors="replace"), cp.returncode
    if code != 0:
        if "Could not find the file" in err or "no such container:path" in err.lower():
            return []  # the container has no such folder: nothing to copy
        last = processes.last_line(err) if err.strip() else f"docker cp exited with {code}"
        raise WorkflowError(f"could not copy {src} out of {container}: {last}")
    return copied
