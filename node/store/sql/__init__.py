"""The job queue, outbox and study index written once in SQL both backends run (SQLite, PostgreSQL).

Each backend supplies a Db (connection, transactions) and a Dialect (what truly differs: the
placeholder, row locks, the clock, the per-study lock, whether the index is shared by several
nodes); everything else, every read-check-write rule of node.store.base, lives here.
"""
