CREATE TABLE "wakeup_census" (
	"kind" text NOT NULL,
	"slot" integer NOT NULL,
	"expected" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "wakeup_census_kind_slot_pk" PRIMARY KEY("kind","slot")
);
--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "publishing_since" timestamp (3) with time zone;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "welcome_deadline" timestamp (3) with time zone;--> statement-breakpoint
ALTER TABLE "identities" ADD COLUMN "superseded_packages" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "key_packages_overdue_delete_idx" ON "key_packages" USING btree ("delete_at") WHERE "key_packages"."delete_at" is not null;