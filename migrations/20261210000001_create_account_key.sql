-- Encryption at rest (envelope encryption): one data key per account, stored wrapped (AES-256-GCM) by a master key
-- that never reaches the database, with that master key's id so several can be in use during a rotation.
-- Sealed values live in the existing columns, marked by a versioned envelope, so no data column changes and rows
-- written before encryption was turned on stay readable.
create table account_key (
    account_id text not null,
    master_key_id text not null,
    -- nonce ‖ ciphertext ‖ tag of the 32-byte data key, with the account id as associated data.
    wrapped bytea not null,
    created_at timestamptz not null default now(),
    rotated_at timestamptz,
    constraint account_key_pkey primary key (account_id),
    constraint account_key_account_fkey foreign key (account_id) references account (id),
    constraint account_key_wrapped_check check (length(wrapped) = 60)
);

-- Only ordo's own role reads data keys: an API transaction (role `ordo_api`) never needs one, since the process
-- unwraps keys through its own connection.
revoke all on account_key from ordo_api;
