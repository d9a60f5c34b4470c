ALTER TABLE "key_packages" DROP CONSTRAINT "key_packages_current_xor_delete_at";--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "credential_identity" "bytea";--> statement-breakpoint
ALTER TABLE "key_packages" ADD COLUMN "published_at" timestamp (3) with time zone;--> statement-breakpoint
CREATE INDEX "identities_failing_idx" ON "identities" USING btree ("last_failure_at") WHERE "identities"."rotation_failures" > 0;--> statement-breakpoint
CREATE UNIQUE INDEX "key_packages_pending_uq" ON "key_packages" USING btree ("identity_id") WHERE not "key_packages"."is_current" and "key_packages"."delete_at" is null;--> statement-breakpoint
CREATE INDEX "key_packages_current_created_idx" ON "key_packages" USING btree ("created_at") WHERE "key_packages"."is_current";--> statement-breakpoint
CREATE INDEX "key_packages_current_not_after_idx" ON "key_packages" USING btree ("not_after") WHERE "key_packages"."is_current";--> statement-breakpoint
ALTER TABLE "key_packages" ADD CONSTRAINT "key_packages_state" CHECK (("key_packages"."is_current" and "key_packages"."delete_at" is null and "key_packages"."published_at" is not null)
        or (not "key_packages"."is_current" and "key_packages"."delete_at" is not null)
        or (not "key_packages"."is_current" and "key_packages"."delete_at" is null and "key_packages"."published_at" is null));