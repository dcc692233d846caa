"""YAML runbooks: steady state, method, rollbacks that always run; load probe; expectations computed from the settings; reports. `verify` is runbooks/verify-ha.yaml."""
