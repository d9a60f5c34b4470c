-- The wakeup census slot becomes a hash the service computes too (src/queue/layout.ts,
-- censusSlot): the low 6 bits of md5(id)'s fourth byte. An identity's queue shard is its slot
-- modulo QUEUE_SHARDS, so the watchdog sums the census per shard without Postgres knowing the
-- number of shards, and changing QUEUE_SHARDS needs no migration. The counts are rebuilt under a
-- lock that waits for every writer in flight and holds new ones until this migration commits.
LOCK TABLE identities IN SHARE MODE;
--> statement-breakpoint
CREATE FUNCTION kp_rotor_census_slot(id text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT get_byte(decode(md5(id), 'hex'), 3) & 63
$$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION kp_rotor_census_add(k text, id text, delta integer) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO wakeup_census (kind, slot, expected) VALUES (k, kp_rotor_census_slot(id), delta)
  ON CONFLICT (kind, slot) DO UPDATE SET expected = wakeup_census.expected + excluded.expected
$$;
--> statement-breakpoint
UPDATE wakeup_census SET expected = 0;
--> statement-breakpoint
UPDATE wakeup_census c SET expected = n.expected
FROM (
  SELECT 'rotation' AS kind, kp_rotor_census_slot(id) AS slot, count(*) AS expected
  FROM identities WHERE deregistered_at IS NULL GROUP BY 2
  UNION ALL
  SELECT 'deletion', kp_rotor_census_slot(id), count(*)
  FROM identities WHERE deregistered_at IS NULL AND superseded_packages > 0 GROUP BY 2
) n
WHERE c.kind = n.kind AND c.slot = n.slot;
