-- Event schedules: a tick may send an orchestration event instead of enqueueing a job, so a target is tagged
-- `job` or `event`.
alter table schedule drop constraint schedule_target_check;
alter table schedule add constraint schedule_target_check
    check (jsonb_typeof(target) = 'object' and (target ? 'job' or target ? 'event'));
