-- Deleting an account (`DELETE /api/accounts/{id}`): the row stays, marked, until maintenance has purged the
-- account's rows from every table in bounded passes; its data key and API keys go at once. Nullable, so older
-- binaries keep reading and writing accounts as before.
alter table account add column deleted_at timestamptz;

-- Maintenance finds accounts to purge without reading the others.
create index account_deleted_at_idx on account (deleted_at) where deleted_at is not null;
