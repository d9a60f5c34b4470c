CREATE TABLE "device_init_keys" (
	"identity_id" text NOT NULL,
	"digest" text NOT NULL,
	"seen_at" timestamp (3) with time zone NOT NULL,
	CONSTRAINT "device_init_keys_identity_id_digest_pk" PRIMARY KEY("identity_id","digest")
);
--> statement-breakpoint
ALTER TABLE "key_packages" ALTER COLUMN "private_key" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "custody" text DEFAULT 'service' NOT NULL;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "notify_url" text;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "awaiting_device_since" timestamp (3) with time zone;--> statement-breakpoint
ALTER TABLE "device_init_keys" ADD CONSTRAINT "device_init_keys_identity_id_identities_id_fk" FOREIGN KEY ("identity_id") REFERENCES "public"."identities"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "identities_awaiting_device_idx" ON "identities" USING btree ("awaiting_device_since") WHERE "identities"."awaiting_device_since" is not null and "identities"."deregistered_at" is null;--> statement-breakpoint
ALTER TABLE "identities" ADD CONSTRAINT "identities_custody" CHECK ("identities"."custody" in ('service', 'device'));--> statement-breakpoint
ALTER TABLE "identities" ADD CONSTRAINT "identities_device_has_endpoint" CHECK ("identities"."custody" <> 'device' or "identities"."deregistered_at" is not null or "identities"."notify_url" is not null);