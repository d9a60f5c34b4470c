-- Recounts what the census triggers keep (DESIGN.md, "Finding lost wake-ups"): every identity's
-- superseded_packages, and the wakeup census from the identities. The triggers run once per row,
-- and every row of one transaction updates the same few census rows, so a statement that
-- writes millions of rows in one transaction (a bulk import) is slow with them on. Such a load
-- runs with triggers off and calls this before it commits (README, "Bulk imports").
-- Locks, in the order every service write takes them (an identity's row, then its key
-- packages): identities in EXCLUSIVE mode (plain reads go on; it waits for every writer in
-- flight, each of which locked an identity first, and holds new ones until the caller's
-- transaction ends), then key_packages in SHARE mode. A bulk load takes the same EXCLUSIVE lock
-- before it writes, so two loads run one after the other instead of deadlocking.
CREATE FUNCTION kp_rotor_census_rebuild() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE identities IN EXCLUSIVE MODE;
  LOCK TABLE key_packages IN SHARE MODE;
  UPDATE identities i SET superseded_packages = coalesce(s.n, 0)
  FROM identities j
  LEFT JOIN (
    SELECT identity_id, count(*)::integer AS n FROM key_packages
    WHERE delete_at IS NOT NULL GROUP BY identity_id
  ) s ON s.identity_id = j.id
  WHERE i.id = j.id AND i.superseded_packages IS DISTINCT FROM coalesce(s.n, 0);
  INSERT INTO wakeup_census (kind, slot, expected)
  SELECT k.kind, s.slot, 0 FROM (VALUES ('rotation'), ('deletion')) k(kind), generate_series(0, 63) s(slot)
  ON CONFLICT (kind, slot) DO UPDATE SET expected = 0;
  UPDATE wakeup_census c SET expected = n.expected
  FROM (
    SELECT 'rotation' AS kind, kp_rotor_census_slot(id) AS slot, count(*) AS expected
    FROM identities WHERE deregistered_at IS NULL GROUP BY 2
    UNION ALL
    SELECT 'deletion', kp_rotor_census_slot(id), count(*)
    FROM identities WHERE deregistered_at IS NULL AND superseded_packages > 0 GROUP BY 2
  ) n
  WHERE c.kind = n.kind AND c.slot = n.slot;
END
$$;
