"""YAML runbooks: steady state, method, rollbacks that always run; the load probe; expectations
computed from the settings; reports. `verify` is the built-in runbooks/verify-ha.yaml."""
