"""The request log explorer: one UsageRecord per request, found, filtered, exported and opened.

A dashboard on top of the apps: it reads `accounting` (the records, their kept content), and for
a request's detail `feedback` (ratings, corrections) and `guardrails` (events). Its pages are
`/dashboard/<tenant>/requests/` (members), `/dashboard/requests/` (operators) and a request's
detail; docs/dashboards.md "Request logs".
"""
