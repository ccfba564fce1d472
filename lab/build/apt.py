"""The host's apt configuration: where the Debian archive is and which release the host runs.

Guest root filesystems are bootstrapped from the mirror the host already uses, so the
repository never names a mirror. Both the one-line format (`sources.list`, `*.list`) and
deb822 (`*.sources`) are read; files apt itself ignores (other suffixes) are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import HostError

APT_ETC = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    """One `deb` entry: an archive URI with its suites and components."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: Path

    @property
    def release_suites(self) -> tuple[str, ...]:
        """Suites that are a release itself (bookworm), not -updates/-security/-backports."""
        return tuple(s for s in self.suites if re.fullmatch(r"[a-z]+", s))


def parse_one_line(text: str, origin: Path) -> list[AptSource]:
    """`deb [options] URI SUITE COMPONENT...` lines; deb-src and comments are skipped."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            sources.append(AptSource(words[1].rstrip("/"), (words[2],), tuple(words[3:]),
                                     origin))
    return sources


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                paragraphs.append(current)
            current, last = {}, ""
        elif raw[0] in " \t" and last:
            current[last] += " " + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            last = key.strip().lower()
            current[last] = value.strip()
    return paragraphs


def parse_deb822(text: str, origin: Path) -> list[AptSource]:
    """deb822 paragraphs with `Types: deb`; `Enabled: no` paragraphs are skipped."""
    sources = []
    for para in _deb822_paragraphs(text):
        if "deb" not in para.get("types", "").split():
            continue
        if para.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        suites = tuple(para.get("suites", "").split())
        components = tuple(para.get("components", "").split())
        for uri in para.get("uris", "").split():
            sources.append(AptSource(uri.rstrip("/"), suites, components, origin))
    return sources


def sources(etc: Path = APT_ETC) -> list[AptSource]:
    """Every `deb` source apt reads, in apt's order (sources.list, then sources.list.d)."""
    found: list[AptSource] = []
    main = etc / "sources.list"
    if main.is_file():
        found += parse_one_line(main.read_text(), main)
    parts = etc / "sources.list.d"
    for path in sorted(parts.iterdir()) if parts.is_dir() else []:
        if path.suffix == ".list":
            found += parse_one_line(path.read_text(), path)
        elif path.suffix == ".sources":
            found += parse_deb822(path.read_text(), path)
    return found


def debian_archive(etc: Path = APT_ETC) -> tuple[str, str]:
    """(mirror URI, release suite) of the host's Debian archive, for debootstrap.

    The archive is the first source with a plain release suite and the `main`
    component that is not the security archive.
    """
    candidates = sources(etc)
    for source in candidates:
        if "security" in source.uri or "main" not in source.components:
            continue
        if source.release_suites:
            return source.uri, source.release_suites[0]
    listed = ", ".join(f"{s.uri} {' '.join(s.suites)} ({s.origin})" for s in candidates)
    raise HostError(f"no Debian archive with a release suite and 'main' in the apt "
                    f"configuration under {etc} (sources: {listed or 'none'}); the debian "
                    "image is bootstrapped from the host's mirror")
