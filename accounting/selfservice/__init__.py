"""Tenant self-service: a tenant's admins manage its API keys (with their budgets and rate
limits), its members and its content retention on pages under `/dashboard/<slug>/`.

`services` holds the writes (each one transaction with its audit entries, `via="dashboard"`),
`forms` the validation of what the pages post, `views` the pages and who may use them.
"""
