-- no-transaction
-- The entity listing walks refs in natural order (collation ordo_natural) within an account and type. Built
-- concurrently: events go on changing entities meanwhile. The primary key (text order) still serves lookups and
-- the previous release's listing.
create index concurrently if not exists entity_natural_ref_idx on entity (account_id, type, ref collate ordo_natural);
