ALTER TABLE "identities" ADD COLUMN "verify_at" timestamp (3) with time zone;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "last_verified_at" timestamp (3) with time zone;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "verify_error" text;--> statement-breakpoint
CREATE INDEX "identities_verify_error_idx" ON "identities" USING btree ("last_verified_at") WHERE "identities"."verify_error" is not null and "identities"."deregistered_at" is null;