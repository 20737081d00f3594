"""`gateway serve --workers N`: N worker processes on one port (docs/scaling.md, "Workers").

The parent (`supervisor`) binds the listening socket, starts what the workers share (on SQLite
the one store writer process and the control relay), starts the workers (`child`) and starts
again any that dies; each worker is a whole gateway (its own event loop, media sessions,
delivery worker) serving the shared socket. Modules, each with one job:

- `count`: the `workers` setting (validated, `auto` resolved to the usable cores).
- `supervisor`: the parent process.
- `child`: a worker's main.
- `shared_writer`: the SQLite writer process every worker sends its busiest transactions to.
- `writer_client`: a worker's SQLite store, talking to that writer process.
- `relay`: control requests (`clear`, `hangup`, `replaced`) to every worker on SQLite.
- `leadership`: once-per-database jobs (the campaign runner, the recording sweep) on one worker.
- `metrics`: `/metrics` as one view of every worker (prometheus_client's multiprocess mode).
"""
