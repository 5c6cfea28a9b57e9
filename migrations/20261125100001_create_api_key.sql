-- API keys and webhook secrets for accounts. Keys are 256-bit random tokens shown once and stored only as their
-- SHA-256 hash (no slow KDF is needed at that entropy); a lookup goes straight to the hash's unique index.
-- The webhook secret is kept as is, because the engine must sign with it.
alter table account
    add column webhook_secret text not null
        default encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex');

create table api_key (
    account_id text not null,
    id text not null,
    key_hash bytea not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    constraint api_key_pkey primary key (account_id, id),
    constraint api_key_key_hash_key unique (key_hash),
    constraint api_key_account_fkey foreign key (account_id) references account (id),
    constraint api_key_key_hash_check check (length(key_hash) = 32)
);
