-- Live workers register here and heartbeat, so the cluster can see who serves which pool, version and kinds.
create table worker (
    id text not null,
    pool text not null,
    version text not null,
    queues text[] not null,
    kinds text[] not null,
    host text not null,
    pid integer not null,
    concurrency integer not null,
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    stopping boolean not null default false,
    constraint worker_pkey primary key (id)
);

create index worker_pool_version_idx on worker (pool, version);

-- Named leases elect one holder for singleton work (maintenance, cron firing, controllers).
create table leader_lease (
    name text not null,
    holder text not null,
    expires_at timestamptz not null,
    acquired_at timestamptz not null default now(),
    constraint leader_lease_pkey primary key (name)
);
