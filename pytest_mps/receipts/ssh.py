"""``ssh-keygen -Y``: the one place a receipt is signed or its signature checked (OpenSSH 8.2+, no
network, no key material handled here).

- sign: ``ssh-keygen -Y sign -f KEY -n NAMESPACE FILE`` on a copy of the bytes in a private temporary
  folder, so the signature never overwrites (or asks to overwrite) anything, and standard input stays
  free for a passphrase prompt; a ``.pub`` key signs through ssh-agent.
- verify: ``ssh-keygen -Y find-principals`` names who the key belongs to in the allowed-signers file,
  then ``ssh-keygen -Y verify -I PRINCIPAL -n NAMESPACE`` checks the signature over the exact bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SSHInputError", "SSHRefusal", "Signer", "sign_bytes", "ssh_keygen", "verify_bytes"]

_TIMEOUT_S = 60


class SSHInputError(ValueError):
    """Input ``ssh-keygen`` cannot read (missing program, unreadable key, signature or allowed-signers
    file); one line."""


class SSHRefusal(ValueError):
    """A readable signature that does not verify (changed bytes, unknown key, wrong namespace)."""


@dataclass(frozen=True)
class Signer:
    """Who signed: the principal from the allowed-signers file and the key's fingerprint."""

    principal: str
    key: str


def ssh_keygen() -> str:
    """The path of ``ssh-keygen``; :class:`SSHInputError` when it is missing."""
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SSHInputError(
            "ssh-keygen was not found; install OpenSSH 8.2 or later (Debian/Ubuntu: apt-get install "
            "openssh-client; macOS ships it)"
        )
    return found


def _run(
    args: list[str], *, data: bytes | None = None, timeout: float | None = _TIMEOUT_S
) -> tuple[int, str]:
    try:
        out = subprocess.run(
            [ssh_keygen(), *args],
            input=data,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SSHInputError(f"ssh-keygen {' '.join(args[:2])} did not finish in {timeout:g} s") from None
    return out.returncode, out.stdout.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def sign_bytes(data: bytes, key: str | os.PathLike[str], namespace: str) -> bytes:
    """An armored SSH signature of ``data`` made with the private key at ``key`` (or its ``.pub``
    through ssh-agent). A passphrase is asked on the terminal, as ``git commit -S`` does."""
    key_path = Path(key).expanduser()
    if not key_path.is_file():
        raise SSHInputError(f"signing key {key} does not exist; pass the path of your SSH private key")
    with tempfile.TemporaryDirectory(prefix="pytest-mps-sign-") as folder:
        message = Path(folder) / "receipt.json"
        message.write_bytes(data)
        try:  # no timeout and no captured stdin: the user may be typing a passphrase
            out = subprocess.run(
                [ssh_keygen(), "-Y", "sign", "-f", str(key_path), "-n", namespace, str(message)],
                capture_output=True,
                check=False,
            )
        except OSError as exc:
            raise SSHInputError(f"cannot run ssh-keygen ({exc})") from None
        signature = message.with_name(message.name + ".sig")
        if out.returncode != 0 or not signature.is_file():
            text = (out.stderr or out.stdout).decode("utf-8", "replace")
            raise SSHInputError(f"ssh-keygen could not sign with {key}: {_last_line(text)}")
        return signature.read_bytes()


def _check_allowed_signers(allowed: Path) -> None:
    if not allowed.is_file():
        raise SSHInputError(
            f"allowed signers file {allowed} does not exist; write one line per trusted key: "
            "'alice@example.com ssh-ed25519 AAAA...'"
        )


def _parse_problem(output: str, allowed: Path) -> str | None:
    """ssh-keygen's complaint about a malformed allowed-signers line, if any (``FILE:N: ...``)."""
    match = re.search(rf"^{re.escape(str(allowed))}:(\d+): (.+)$", output, re.MULTILINE)
    return f"line {match.group(1)}: {match.group(2).strip()}" if match else None


def verify_bytes(data: bytes, signature: Path, allowed: Path, namespace: str) -> Signer:
    """Check that ``signature`` is a good signature of ``data`` in ``namespace`` by a key listed in
    ``allowed`` (an OpenSSH allowed-signers file); returns who signed.

    Raises :class:`SSHInputError` for files that cannot be read or parsed, :class:`SSHRefusal` for a
    signature that does not verify."""
    _check_allowed_signers(allowed)
    if not signature.is_file():
        raise SSHInputError(f"signature {signature} does not exist; it is written beside the receipt")
    code, output = _run(["-Y", "find-principals", "-s", str(signature), "-f", str(allowed)])
    if code != 0:
        problem = _parse_problem(output, allowed)
        if "parse signature" in output or "sshsig_armor" in output:
            raise SSHInputError(f"{signature} is not an SSH signature ({_last_line(output)})")
        if problem is not None:
            raise SSHInputError(f"allowed signers file {allowed}: {problem}")
        raise SSHRefusal(f"signed by a key that is not in {allowed}")
    # One line per matching allowed-signers entry, each a comma-separated list of principals.
    principals = [
        name.strip()
        for line in output.splitlines()
        if line.strip() and " " not in line.strip()
        for name in line.split(",")
        if name.strip()
    ]
    last, namespace_mismatch = "no principal", False
    for principal in principals:
        code, output = _run(
            ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", namespace, "-s", str(signature)],
            data=data,
        )
        if code == 0:
            found = re.search(r"with (\S+ key \S+)", output)
            return Signer(principal=principal, key=found.group(1) if found else "")
        last = _last_line(output)
        namespace_mismatch |= "namespace does not match" in output
    if namespace_mismatch:
        raise SSHRefusal(f"the signature is not for namespace {namespace!r}; sign with -n {namespace}")
    raise SSHRefusal(
        f"the signature does not match the receipt's bytes: it was changed after signing ({last})"
    )
