"""Metrics: what nerve counts as it goes, and its exposition for Prometheus (SPEC §3, §6).

``tally``: the counts kept as things happen (plain integers: a hook is a dict increment);
``families``: the metric families built from them and from what the master holds, when
asked (the only module that imports prometheus_client, itself imported only then);
``textfile``: the atomic write of the textfile; ``service``: the ``metrics`` method's text
and the textfile's timer.

Nothing is imported here: ``tally`` is imported by the modules that count
(nerved.master.workflows.runs), which ``service`` imports in turn.
"""
