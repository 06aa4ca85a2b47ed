"""The operators' room: `/metrics` (Prometheus text) and `/status` (a server-drawn page).

It owns the figures read from the database at scrape or page time (figures.py), their Prometheus
exposition with this instance's label (exposition.py), the 24-hour chart as inline SVG
(chart.py) and the status page and its access check (status.py). It may import gateway.metrics,
gateway.settings, gateway.panel.auth (to read the panel's system token) and store; it never
imports the wiring (gateway.app, gateway.http): engines, settings and the mailbox states arrive as
one `OpsDeps` when the routes are mounted.
"""
