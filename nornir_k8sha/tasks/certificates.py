"""Certificate expiry of the cluster PKI in the state dir: the one check for it.

Local only (the certificates on the hosts are the ones `deploy` placed from here). A leaf within
`constants.CERT_RENEW_BEFORE_DAYS` of its end fails and names `pki renew`, which renews it and
rolls it out one host at a time (tasks/pki_renew.py); a CA that close must be rotated
deliberately, since every certificate under it changes.
"""

from __future__ import annotations

import time
from pathlib import Path

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import CheckResult, failed, passed, skipped
from nornir_k8sha.pki import expiry_report


def check(state_dir: Path, within_days: int = C.CERT_RENEW_BEFORE_DAYS) -> list[CheckResult]:
    """One failed result per certificate expiring within `within_days`, else one ok summary."""
    if not (Path(state_dir) / C.STATE_PKI_DIR).exists():
        return [skipped("-", "no PKI yet: run `pki` or `deploy`")]
    start = time.monotonic()
    certs = sorted(expiry_report(Path(state_dir)), key=lambda c: c.days_left)
    out = []
    for cert in certs:
        if cert.days_left < within_days:
            advice = ("CA: rotate deliberately (every certificate under it changes)"
                      if cert.is_ca else f"renew it with `pki renew --within {within_days}`: "
                      "one host at a time, the API stays up")
            out.append(failed(cert.name, f"expires in {cert.days_left} days ({advice})", start,
                              days_left=cert.days_left, is_ca=cert.is_ca))
    if not out and certs:
        first = certs[0]
        out.append(passed(f"{len(certs)} certificates", f"none expires within {within_days} "
                          f"days; first: {first.name} in {first.days_left} days", start,
                          first=first.name, days_left=first.days_left))
    return out
