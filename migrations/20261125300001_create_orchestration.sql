-- Orchestration: workflows of rules (immutable versions), the entities they drive, the event log (orchestration
-- events and their audit records in one table, so a listing by entity or source event is one index walk), and
-- inventory positions changed by `inventory.*` rules. Every key starts with `account_id`.

-- Each upload is a new row; rows are never updated. An entity pins `major` and runs the highest `minor` of it.
create table workflow (
    account_id text not null,
    ref text not null,
    major integer not null,
    minor integer not null,
    definition jsonb not null,
    created_at timestamptz not null default now(),
    constraint workflow_pkey primary key (account_id, ref, major, minor),
    constraint workflow_account_fkey foreign key (account_id) references account (id),
    constraint workflow_ref_check check (ref ~ '^[^:]+::[^:]+$' and length(ref) <= 255),
    constraint workflow_major_check check (major >= 1),
    constraint workflow_minor_check check (minor >= 0)
);

-- One row per entity; written only by the executor (which holds the row lock for a whole execution) and by create.
create table entity (
    account_id text not null,
    type text not null,
    ref text not null,
    subtype text not null,
    status text not null,
    attributes jsonb not null default '{}',
    workflow_major integer not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint entity_pkey primary key (account_id, type, ref),
    constraint entity_account_fkey foreign key (account_id) references account (id),
    constraint entity_type_check check (length(type) between 1 and 255 and type !~ '::'),
    constraint entity_subtype_check check (length(subtype) between 1 and 255 and subtype !~ '::'),
    constraint entity_ref_check check (length(ref) between 1 and 255),
    constraint entity_status_check check (length(status) between 1 and 255),
    constraint entity_attributes_check check (jsonb_typeof(attributes) = 'object')
);

-- `seq` orders the log: drawn in acceptance order (after the queue's per-entity lock, so within one root entity
-- seq order is execution order). Gaps are normal.
create sequence event_seq;

create table event (
    account_id text not null,
    seq bigint not null,
    name text not null,
    kind text not null,
    category text,
    status text not null,
    entity_type text not null,
    entity_ref text not null,
    attributes jsonb not null default '{}',
    source_event_id bigint,
    -- The queued job that executes this event (none for inline events and audit records).
    job_id bigint,
    scheduled_at timestamptz,
    created_at timestamptz not null default now(),
    processed_at timestamptz,
    error text,
    constraint event_pkey primary key (account_id, seq),
    constraint event_account_fkey foreign key (account_id) references account (id),
    constraint event_kind_check check (kind in ('orchestration', 'audit')),
    constraint event_status_check check (
        status in ('pending', 'scheduled', 'running', 'success', 'no_match', 'failed', 'cancelled')
    ),
    constraint event_category_check check (
        (kind = 'audit' and category in ('snapshot', 'ruleset', 'rule', 'action', 'exception', 'no_match',
                                         'webhook', 'custom'))
        or (kind = 'orchestration' and category is null)
    ),
    constraint event_name_check check (length(name) between 1 and 255)
);

-- The executor finds its event by the job it runs.
create unique index event_account_id_job_id_key on event (account_id, job_id) where job_id is not null;
-- Listings by entity, and the audit trail of one event.
create index event_account_id_entity_type_entity_ref_seq_idx on event (account_id, entity_type, entity_ref, seq);
create index event_account_id_source_event_id_seq_idx on event (account_id, source_event_id, seq)
    where source_event_id is not null;
-- Retention prunes by age.
create index event_created_at_idx on event (created_at);

create table inventory_position (
    account_id text not null,
    sku_ref text not null,
    location_ref text not null,
    on_hand bigint not null default 0,
    reserved bigint not null default 0,
    updated_at timestamptz not null default now(),
    constraint inventory_position_pkey primary key (account_id, sku_ref, location_ref),
    constraint inventory_position_account_fkey foreign key (account_id) references account (id),
    constraint inventory_position_on_hand_check check (on_hand >= 0),
    constraint inventory_position_reserved_check check (reserved >= 0)
);
