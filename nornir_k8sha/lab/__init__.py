"""The embedded lab: the inventory's hosts as real Linux hosts on this machine.

Non-LVS hosts are systemd-nspawn containers booting systemd; LVS directors are user-mode Linux
guests (a kernel with IPVS). All sit on one bridge with the controller. `lab.py` orchestrates
`up`/`down`/`status`; `faults.py` is the fault API. Stand-ins for Kubernetes pieces that cannot
run here live in the `standins` subpackage (added separately).
"""
