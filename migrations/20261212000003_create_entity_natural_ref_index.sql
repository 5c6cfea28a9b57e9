-- no-transaction
-- The entity listing walks refs in natural order (collation ordo_natural) within an account and type. Built
-- concurrently: events go on changing entities meanwhile. The primary key (text order) still serves lookups and
-- the previous release's listing.
-- A concurrent build waits for older transactions without blocking anyone, and sqlx sends a `-- no-transaction`
-- migration as one query string, which PostgreSQL runs as one implicit transaction if it holds several statements:
-- a `set lock_timeout` beside the build would make it fail ("cannot run inside a transaction block").
-- squawk-ignore require-lock-timeout
create index concurrently if not exists entity_natural_ref_idx on entity (account_id, type, ref collate ordo_natural);
