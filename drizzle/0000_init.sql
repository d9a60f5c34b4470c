CREATE TABLE "identities" (
	"id" text PRIMARY KEY NOT NULL,
	"generation" integer DEFAULT 0 NOT NULL,
	"rotation_deadline" timestamp (3) with time zone,
	"last_rotated_at" timestamp (3) with time zone,
	"signature_public_key" "bytea",
	"signature_private_key" "bytea",
	"rotation_failures" integer DEFAULT 0 NOT NULL,
	"last_error" text,
	"last_failure_at" timestamp (3) with time zone,
	"created_at" timestamp (3) with time zone DEFAULT now() NOT NULL,
	"deregistered_at" timestamp (3) with time zone,
	CONSTRAINT "identities_live_has_deadline" CHECK ("identities"."deregistered_at" is not null or "identities"."rotation_deadline" is not null)
);
--> statement-breakpoint
CREATE TABLE "key_packages" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"identity_id" text NOT NULL,
	"generation" integer NOT NULL,
	"ref" text NOT NULL,
	"ciphersuite" text NOT NULL,
	"key_package" "bytea" NOT NULL,
	"private_key" "bytea" NOT NULL,
	"not_before" timestamp (3) with time zone NOT NULL,
	"not_after" timestamp (3) with time zone NOT NULL,
	"created_at" timestamp (3) with time zone NOT NULL,
	"is_current" boolean NOT NULL,
	"delete_at" timestamp (3) with time zone,
	CONSTRAINT "key_packages_current_xor_delete_at" CHECK (("key_packages"."is_current" and "key_packages"."delete_at" is null) or (not "key_packages"."is_current" and "key_packages"."delete_at" is not null))
);
--> statement-breakpoint
ALTER TABLE "key_packages" ADD CONSTRAINT "key_packages_identity_id_identities_id_fk" FOREIGN KEY ("identity_id") REFERENCES "public"."identities"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "identities_live_deadline_idx" ON "identities" USING btree ("rotation_deadline") WHERE "identities"."deregistered_at" is null;--> statement-breakpoint
CREATE UNIQUE INDEX "key_packages_generation_uq" ON "key_packages" USING btree ("identity_id","generation");--> statement-breakpoint
CREATE UNIQUE INDEX "key_packages_current_uq" ON "key_packages" USING btree ("identity_id") WHERE "key_packages"."is_current";--> statement-breakpoint
CREATE INDEX "key_packages_delete_at_idx" ON "key_packages" USING btree ("identity_id","delete_at") WHERE "key_packages"."delete_at" is not null;