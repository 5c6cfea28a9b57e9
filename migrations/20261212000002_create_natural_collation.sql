-- Entity refs sort naturally in listings (`A2` before `A10`): ICU's numeric ordering. Deterministic, so equality
-- stays byte equality and an index in this collation serves the keyset `(type, ref) > (…)` of the listing.
set local lock_timeout = '5s';
create collation if not exists ordo_natural (provider = icu, locale = 'und-u-kn-true', deterministic = true);
