"""Make the runtime base rootfs of the image from the Debian rootfs debootstrap made: python3 and the shared
libraries it (and the manylinux wheels) load, the CA certificates, and nothing else. No shell, no coreutils, no
apt or dpkg, no perl: the runtime stage of the Dockerfile has no RUN step, and what is not there cannot be used
by whoever gets code execution in the container.

    python3 image/runtime_rootfs.py SOURCE_ROOTFS DEST_ROOTFS

The packages kept are the Depends/Pre-Depends closure of ROOTS minus SKIP (dpkg's and the shells' own tooling);
their Debian status paragraphs are written to DEST's dpkg status so image scanners still see what is inside.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

# python3 (the interpreter and its stdlib); libstdc++6 for the C++ extension wheels (grpcio) that link it.
ROOTS = ("python3", "libstdc++6")
# Pulled in by the roots' maintainer scripts or alternatives only; nothing at run time executes them.
SKIP = frozenset({"dpkg", "install-info", "debconf", "perl-base", "dash", "bash", "coreutils", "tar"})
# Trees copied whole: the CA bundle and OpenSSL's directory (ssl.get_default_verify_paths() looks in
# /usr/lib/ssl, whose links the `openssl` package owns), and the dynamic loader's cache and config.
TREES = (
    "etc/ssl",
    "usr/share/ca-certificates",
    "usr/lib/ssl",
    "etc/ld.so.cache",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d",
    "etc/nsswitch.conf",
    "etc/os-release",
    "usr/lib/os-release",
)
# Documentation is not needed to run; the Debian copyright files stay (their licences ask for it).
DROP = re.compile(r"^/usr/share/(man|info|locale|lintian|bug|doc-base)/|^/usr/share/doc/[^/]+/(?!copyright$)")
# Runtime users: root and the chart's non-root UID/GID.
USERS = "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"


def read_status(source: Path) -> dict[str, dict[str, str]]:
    """Installed packages of ``source``'s dpkg database: name -> the status paragraph's fields (and its text)."""
    packages: dict[str, dict[str, str]] = {}
    for paragraph in (source / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in paragraph.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = {**fields, "_text": paragraph.strip()}
    return packages


def closure(packages: dict[str, dict[str, str]]) -> list[str]:
    """ROOTS and everything they depend on (first installed alternative of each group), minus SKIP."""
    seen: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name in SKIP:
            continue
        if name not in packages:
            raise SystemExit(f"runtime_rootfs: package {name} is not installed in the source rootfs")
        seen.add(name)
        relations = ", ".join(filter(None, (packages[name].get("Pre-Depends"), packages[name].get("Depends"))))
        for group in filter(None, (g.strip() for g in relations.split(","))):
            names = [re.split(r"[\s(:]", alternative.strip(), maxsplit=1)[0] for alternative in group.split("|")]
            installed = [n for n in names if n in packages]
            if installed:
                todo.append(installed[0])
    return sorted(seen)


def package_files(source: Path, name: str) -> list[str]:
    info = source / "var/lib/dpkg/info"
    for candidate in (info / f"{name}.list", *sorted(info.glob(f"{name}:*.list"))):
        if candidate.exists():
            return [line for line in candidate.read_text().splitlines() if line and line != "/."]
    raise SystemExit(f"runtime_rootfs: no file list for {name}")


def copy_entry(source: Path, dest: Path, relative: str) -> None:
    """Copy one path (a symlink as a symlink, a directory without its contents) into ``dest``."""
    src = source / relative
    dst = dest / relative
    if not src.is_symlink() and not src.exists():
        return  # dpkg lists diverted or removed paths too
    mode = src.lstat().st_mode
    if stat.S_ISDIR(mode):
        if not dst.is_symlink():  # /lib, /bin... are links to /usr/... (merged /usr): keep them links
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copystat(src, dst, follow_symlinks=False)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def copy_tree(source: Path, dest: Path, relative: str) -> None:
    src = source / relative
    if src.is_dir() and not src.is_symlink():
        for root, dirs, files in os.walk(src):
            for entry in [*dirs, *files]:
                copy_entry(source, dest, str((Path(root) / entry).relative_to(source)))
    copy_entry(source, dest, relative)


def build(source: Path, dest: Path) -> list[str]:
    packages = read_status(source)
    kept = closure(packages)
    dest.mkdir(parents=True)
    # merged /usr: the top-level links first, so files listed under /lib land in /usr/lib
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if (source / top).is_symlink():
            target = os.readlink(source / top)
            (dest / top).parent.joinpath(target).mkdir(parents=True, exist_ok=True)
            os.symlink(target, dest / top)
    for name in kept:
        for path in package_files(source, name):
            if not DROP.search(path):
                copy_entry(source, dest, path.lstrip("/"))
    for tree in TREES:
        copy_tree(source, dest, tree)
    for directory, mode in (("tmp", 0o1777), ("run", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):
        (dest / directory).mkdir(exist_ok=True)
        (dest / directory).chmod(mode)
    (dest / "etc/passwd").write_text(USERS)
    (dest / "etc/group").write_text(GROUP)
    status = dest / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text("".join(packages[name]["_text"] + "\n\n" for name in kept))
    return kept


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: runtime_rootfs.py SOURCE_ROOTFS DEST_ROOTFS", file=sys.stderr)
        return 2
    source, dest = Path(argv[1]), Path(argv[2])
    if not (source / "var/lib/dpkg/status").is_file():
        print(f"runtime_rootfs: {source} has no dpkg status (not a Debian rootfs)", file=sys.stderr)
        return 2
    if dest.exists():
        print(f"runtime_rootfs: {dest} exists", file=sys.stderr)
        return 2
    kept = build(source, dest)
    print(f"runtime_rootfs: {len(kept)} packages: {' '.join(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
