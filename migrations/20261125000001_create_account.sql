-- Every tenant-owned row names its account from day one, so isolation never needs a data migration later.
-- The account `default` serves library callers and `ordo bench`, which name none.
create table account (
    id text not null,
    name text not null default '',
    region text not null default 'local',
    created_at timestamptz not null default now(),
    constraint account_pkey primary key (id),
    constraint account_id_check check (id ~ '^[a-z0-9-]{1,63}$')
);

insert into account (id, name) values ('default', 'Default account');
