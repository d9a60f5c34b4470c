-- The wakeup census (DESIGN.md, "Finding lost wake-ups"): per queue, how many wake-up jobs Redis
-- should hold, kept by triggers in the transactions that change it.
--   rotation: one job per live identity;
--   deletion: one job per live identity with at least one superseded key package.
-- Counts are spread over 64 slots per kind (hashtext(id) & 63) so concurrent commits rarely
-- update the same row; readers sum them.
CREATE FUNCTION kp_rotor_census_add(k text, id text, delta integer) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO wakeup_census (kind, slot, expected) VALUES (k, hashtext(id) & 63, delta)
  ON CONFLICT (kind, slot) DO UPDATE SET expected = wakeup_census.expected + excluded.expected
$$;
--> statement-breakpoint
CREATE FUNCTION kp_rotor_census_identity() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  old_rotation integer := 0;
  new_rotation integer := 0;
  old_deletion integer := 0;
  new_deletion integer := 0;
  row_id text;
BEGIN
  IF TG_OP <> 'INSERT' THEN
    old_rotation := (OLD.deregistered_at IS NULL)::integer;
    old_deletion := (OLD.deregistered_at IS NULL AND OLD.superseded_packages > 0)::integer;
    row_id := OLD.id;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    new_rotation := (NEW.deregistered_at IS NULL)::integer;
    new_deletion := (NEW.deregistered_at IS NULL AND NEW.superseded_packages > 0)::integer;
    row_id := NEW.id;
  END IF;
  IF new_rotation <> old_rotation THEN
    PERFORM kp_rotor_census_add('rotation', row_id, new_rotation - old_rotation);
  END IF;
  IF new_deletion <> old_deletion THEN
    PERFORM kp_rotor_census_add('deletion', row_id, new_deletion - old_deletion);
  END IF;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE FUNCTION kp_rotor_census_key_package() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  delta integer := 0;
  row_id text;
BEGIN
  IF TG_OP <> 'INSERT' AND OLD.delete_at IS NOT NULL THEN
    delta := delta - 1;
    row_id := OLD.identity_id;
  END IF;
  IF TG_OP <> 'DELETE' AND NEW.delete_at IS NOT NULL THEN
    delta := delta + 1;
    row_id := NEW.identity_id;
  END IF;
  IF delta <> 0 THEN
    UPDATE identities SET superseded_packages = superseded_packages + delta WHERE id = row_id;
  END IF;
  RETURN NULL;
END
$$;
--> statement-breakpoint
UPDATE identities i SET superseded_packages = s.n
FROM (
  SELECT identity_id, count(*)::integer AS n FROM key_packages
  WHERE delete_at IS NOT NULL GROUP BY identity_id
) s
WHERE s.identity_id = i.id;
--> statement-breakpoint
INSERT INTO wakeup_census (kind, slot, expected)
SELECT k.kind, s.slot, 0 FROM (VALUES ('rotation'), ('deletion')) k(kind), generate_series(0, 63) s(slot);
--> statement-breakpoint
UPDATE wakeup_census c SET expected = n.expected
FROM (
  SELECT 'rotation' AS kind, hashtext(id) & 63 AS slot, count(*) AS expected
  FROM identities WHERE deregistered_at IS NULL GROUP BY 2
  UNION ALL
  SELECT 'deletion', hashtext(id) & 63, count(*)
  FROM identities WHERE deregistered_at IS NULL AND superseded_packages > 0 GROUP BY 2
) n
WHERE c.kind = n.kind AND c.slot = n.slot;
--> statement-breakpoint
CREATE TRIGGER identities_census AFTER INSERT OR DELETE OR UPDATE OF deregistered_at, superseded_packages
ON identities FOR EACH ROW EXECUTE FUNCTION kp_rotor_census_identity();
--> statement-breakpoint
CREATE TRIGGER key_packages_census AFTER INSERT OR DELETE OR UPDATE OF delete_at
ON key_packages FOR EACH ROW EXECUTE FUNCTION kp_rotor_census_key_package();
