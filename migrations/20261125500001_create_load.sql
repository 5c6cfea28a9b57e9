-- Loads: high-volume batch data (CONTRACT §6). A load is a named container for one UTC day; its batches carry up
-- to 5 000 inventory records each, stored as chunks (one row of parallel arrays per chunk) so a batch costs a few
-- rows, not one per record. Each chunk is processed by one queued job; its results are written back into the same
-- row. Every key starts with `account_id`.

create table load (
    account_id text not null,
    id bigint generated always as identity,
    name text not null,
    -- The UTC day the load belongs to; it is open during that day and closed afterwards.
    day date not null,
    created_at timestamptz not null default now(),
    constraint load_pkey primary key (account_id, id),
    constraint load_account_fkey foreign key (account_id) references account (id),
    constraint load_name_check check (length(name) between 1 and 255)
);

-- One load of a name per account and day; `ordo load` finds today's by name.
create unique index load_account_id_name_day_key on load (account_id, name, day);

create table load_batch (
    account_id text not null,
    id bigint generated always as identity,
    load_id bigint not null,
    status text not null default 'pending',
    -- Per account, as for jobs: the same key again returns this batch (or 409 with a different body).
    idempotency_key text,
    fingerprint bytea not null,
    total integer not null,
    unchanged integer not null default 0,
    changed integer not null default 0,
    failed integer not null default 0,
    -- Chunk jobs of the batch and how many have finished; the batch is complete when they are equal.
    chunks integer not null,
    chunks_done integer not null default 0,
    created_at timestamptz not null default now(),
    started_at timestamptz,
    completed_at timestamptz,
    constraint load_batch_pkey primary key (account_id, id),
    constraint load_batch_load_fkey foreign key (account_id, load_id) references load (account_id, id),
    constraint load_batch_status_check check (status in ('pending', 'running', 'complete')),
    constraint load_batch_counts_check check (
        unchanged >= 0 and changed >= 0 and failed >= 0 and unchanged + changed + failed <= total
    ),
    constraint load_batch_chunks_check check (chunks_done between 0 and chunks),
    constraint load_batch_idempotency_key_check check (length(idempotency_key) between 1 and 255)
);

create unique index load_batch_account_id_idempotency_key_key on load_batch (account_id, idempotency_key)
    where idempotency_key is not null;
-- A load's batches, in order.
create index load_batch_account_id_load_id_id_idx on load_batch (account_id, load_id, id);

-- The records of a batch, split by position so that one position is never in two chunks of a batch. Arrays are
-- parallel: element i is the record at batch index idx[i]. `outcome`/`message` are null until the chunk's job
-- has processed it; records refused at the door sit in an already processed chunk of their own.
create table load_chunk (
    account_id text not null,
    batch_id bigint not null,
    chunk integer not null,
    idx integer[] not null,
    sku_ref text[] not null,
    location_ref text[] not null,
    qty bigint[] not null,
    outcome text[],
    message text[],
    constraint load_chunk_pkey primary key (account_id, batch_id, chunk),
    constraint load_chunk_batch_fkey foreign key (account_id, batch_id) references load_batch (account_id, id)
        on delete cascade
);

-- Tenant isolation, as for every tenant-owned table (see the row-level security migration). Workers (the
-- owner) bypass it on purpose, as for `job`.
alter table load enable row level security;
create policy load_account_isolation on load to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table load_batch enable row level security;
create policy load_batch_account_isolation on load_batch to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table load_chunk enable row level security;
create policy load_chunk_account_isolation on load_chunk to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));
