"""Give a second environment the packages it shares with .venv, without a copy and without seeing the rest.

Run with .venv's Python: ``.venv/bin/python scripts/share_packages.py TARGET_SITE LOCK [LOCK ...]``.
Every distribution installed in this interpreter's site-packages whose name and version a lock pins exactly is
linked into TARGET_SITE file by file (real folders, a symbolic link per file), so the target sees precisely what
its own locks name: a package .venv has at another version, or that the locks do not name at all, stays invisible
(a site folder shared through a .pth file leaked such packages into .venv-verl). Files are linked one by one, not
whole folders, so that a package the target installs itself into a shared namespace folder (``google/``,
``nvidia/``) writes into the target, never into .venv.
"""

import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(locks: list[Path]) -> set[tuple[str, str]]:
    found = set()
    for lock in locks:
        for line in lock.read_text(encoding="utf-8").splitlines():
            match = PIN.match(line)
            if match:
                found.add((canonical(match.group(1)), match.group(2)))
    return found


def share(target: Path, locks: list[Path]) -> int:
    source = Path(sysconfig.get_paths()["purelib"])
    wanted = pins(locks)
    # What the target has installed itself (pip, setuptools from venv's ensurepip) stays its own: pip replaces
    # it with the locked version, where linking over it would mix two versions' files.
    own = {canonical(dist.metadata["Name"]) for dist in metadata.distributions(path=[str(target)])}
    linked = 0
    for dist in metadata.distributions(path=[str(source)]):
        name = canonical(dist.metadata["Name"])
        if (name, dist.version) not in wanted or name in own or dist.files is None:
            continue
        for file in dist.files:
            if file.parts[0] == "..":  # console scripts in bin/: the target's own pip makes none of them needed
                continue
            origin, link = source / file, target / file
            if not origin.exists() or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(origin)
            linked += 1
    return linked


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    count = share(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    print(f"linked {count} files of the packages shared with {sys.prefix}")
