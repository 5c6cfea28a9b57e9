-- The W3C trace context an event was accepted under, so emitted events and webhooks continue the caller's trace.
alter table event add column traceparent text;
