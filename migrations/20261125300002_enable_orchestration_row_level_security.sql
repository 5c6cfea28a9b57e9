-- The orchestration tables are tenant data like `job`: API transactions (role `ordo_api`, setting
-- `ordo.account_id`) see only their account's workflows, entities, events and inventory positions. The owner
-- (workers, the executor) bypasses RLS on purpose, as for `job`.
alter table workflow enable row level security;
create policy workflow_account_isolation on workflow to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table entity enable row level security;
create policy entity_account_isolation on entity to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table event enable row level security;
create policy event_account_isolation on event to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));

alter table inventory_position enable row level security;
create policy inventory_position_account_isolation on inventory_position to ordo_api
    using (account_id = current_setting('ordo.account_id', true))
    with check (account_id = current_setting('ordo.account_id', true));
